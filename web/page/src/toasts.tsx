/**
 * Toasts: short notices in a corner that leave by themselves, announced to screen readers.
 */

import { createContext, useCallback, useContext, useRef, useState, type ReactNode } from "react";

interface Toast {
  id: number;
  title: string;
  text: string;
  tone: "info" | "error";
}

type Show = (toast: Omit<Toast, "id">) => void;

const ToastContext = createContext<Show>(() => {});

const TOAST_MS = 4_000;
const MAX_TOASTS = 4;

/** Provides `useToast` to the page and shows the toasts. */
export function Toaster({ children }: { children: ReactNode }) {
  const [toasts, setToasts] = useState<Toast[]>([]);
  const nextId = useRef(1);

  const show = useCallback<Show>((toast) => {
    const id = nextId.current++;
    setToasts((current) => [...current, { ...toast, id }].slice(-MAX_TOASTS));
    setTimeout(() => setToasts((current) => current.filter((t) => t.id !== id)), TOAST_MS);
  }, []);

  return (
    <ToastContext.Provider value={show}>
      {children}
      <div className="toasts" role="status" aria-live="polite">
        {toasts.map((toast) => (
          <div key={toast.id} className={`toast toast-${toast.tone}`} data-testid="toast">
            <strong>{toast.title}</strong>
            <span>{toast.text}</span>
          </div>
        ))}
      </div>
    </ToastContext.Provider>
  );
}

/** Shows a toast. */
export function useToast(): Show {
  return useContext(ToastContext);
}
