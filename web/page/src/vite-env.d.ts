/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** The Tally server the development page talks to, such as http://127.0.0.1:8094. */
  readonly VITE_SERVER_URL?: string;
}
