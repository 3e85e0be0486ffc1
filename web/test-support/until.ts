// Waiting on a subscription in tests against a real server: resolves when its state satisfies a
// condition, and fails with the state it was in otherwise.
import type {
  CounterSubscription,
  SubscriptionState,
} from "../packages/client/src/subscription.js";

/** Resolves when `subscription`'s state satisfies `done`, or fails after `ms`. */
export function until(
  subscription: CounterSubscription,
  done: (state: SubscriptionState) => boolean,
  ms = 15_000,
): Promise<SubscriptionState> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const state = subscription.getState();
      if (!done(state)) return false;
      clearTimeout(timer);
      stop();
      resolve(state);
      return true;
    };
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`timed out; state: ${JSON.stringify(subscription.getState())}`));
    }, ms);
    const stop = subscription.subscribe(() => void check());
    check();
  });
}
