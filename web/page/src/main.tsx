/**
 * The page's entry: the token of a `#token=` link put away first, one TallyClient (the page's own
 * origin, or VITE_SERVER_URL in development) with the page's token, one QueryClient, and the app.
 */

import { TallyClient, TallyError } from "@tally/client";
import { TallyProvider } from "@tally/react";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import { getToken, takeTokenFromAddress } from "./session";
import { Toaster } from "./toasts";
import "./styles.css";

// Before anything is sent: the fragment leaves the address bar at once.
takeTokenFromAddress();

const client = new TallyClient({ baseUrl: import.meta.env.VITE_SERVER_URL ?? "", getToken });

const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      // Live updates keep values fresh; a refetch on focus would only repeat what the socket said.
      staleTime: Infinity,
      refetchOnWindowFocus: false,
      // A refusal that is not temporary (a bad name, say) will not change on a retry.
      retry: (failures, error) =>
        failures < 3 && (!(error instanceof TallyError) || error.temporary),
    },
  },
});

const root = document.getElementById("root");
if (root === null) throw new Error("the page has no #root element");

createRoot(root).render(
  <StrictMode>
    <TallyProvider client={client}>
      <QueryClientProvider client={queryClient}>
        <Toaster>
          <App />
        </Toaster>
      </QueryClientProvider>
    </TallyProvider>
  </StrictMode>,
);
