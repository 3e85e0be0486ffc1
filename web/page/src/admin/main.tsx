/**
 * The admin page's entry: as the counter page's (main.tsx), a `#token=` link put away first, one
 * TallyClient with the page's token, and the app; the two pages share the session code.
 */

import { TallyClient } from "@tally/client";
import { TallyProvider } from "@tally/react";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { getToken, takeTokenFromAddress } from "../session";
import { AdminApp } from "./AdminApp";
import "../styles.css";
import "./admin.css";

// Before anything is sent: the fragment leaves the address bar at once.
takeTokenFromAddress();

const client = new TallyClient({ baseUrl: import.meta.env.VITE_SERVER_URL ?? "", getToken });

const root = document.getElementById("root");
if (root === null) throw new Error("the page has no #root element");

createRoot(root).render(
  <StrictMode>
    <TallyProvider client={client}>
      <AdminApp />
    </TallyProvider>
  </StrictMode>,
);
