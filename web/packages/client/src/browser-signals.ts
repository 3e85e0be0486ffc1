/**
 * What a browser says about the network that a socket cannot see by itself: `online` and a tab
 * becoming visible (the network may be back: reconnect now rather than at the end of a backoff),
 * and `offline` (a phone's OS knows the socket is dead long before its TCP does). Outside a
 * browser there is nothing to listen to, and nothing happens.
 */

export interface BrowserSignals {
  /** The network may be back. */
  wake(): void;
  /** The network is gone. */
  offline(): void;
}

/** Listens for `signals` until the returned function is called. */
export function listenToBrowser(signals: BrowserSignals): () => void {
  if (typeof window === "undefined" || typeof window.addEventListener !== "function") {
    return () => {};
  }
  const onWake = () => {
    if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
    signals.wake();
  };
  const onOffline = () => signals.offline();
  const hasDocument = typeof document !== "undefined";
  window.addEventListener("online", onWake);
  window.addEventListener("offline", onOffline);
  if (hasDocument) document.addEventListener("visibilitychange", onWake);
  return () => {
    window.removeEventListener("online", onWake);
    window.removeEventListener("offline", onOffline);
    if (hasDocument) document.removeEventListener("visibilitychange", onWake);
  };
}
