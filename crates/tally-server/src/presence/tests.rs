//! The shared presence's own rules, over a scripted backend and paused time: what each tick
//! sends, what it announces, and what it does when the backend fails or forgot this node.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::topic::{Announced, Subscription, User};

/// What the backend answers next; an exchange with nothing scripted answers no others.
enum Answer {
    Others(Vec<(&'static str, Presence)>),
    /// Only these counters' sums may have changed.
    Changed(Vec<(&'static str, Presence)>),
    Joined,
    Fail,
    Hang,
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    /// The shares each exchange was sent, sorted by name.
    sent: Mutex<Vec<Vec<(String, Presence)>>>,
    left: Mutex<bool>,
}

#[async_trait]
impl PresenceBackend for Arc<Script> {
    async fn exchange(
        &self,
        shares: &[(CounterName, Presence)],
        _watched: &[WatchedTopic],
    ) -> Result<Exchanged, PresenceError> {
        let mut shares: Vec<_> =
            shares.iter().map(|(name, presence)| (name.to_string(), *presence)).collect();
        shares.sort_by(|a, b| a.0.cmp(&b.0));
        self.sent.lock().unwrap().push(shares);
        let answer = self.answers.lock().unwrap().pop_front();
        match answer {
            None => Ok(Exchanged { complete: true, ..Exchanged::default() }),
            Some(Answer::Others(others)) => {
                Ok(Exchanged { others: sums(others), complete: true, joined: false })
            }
            Some(Answer::Changed(others)) => {
                Ok(Exchanged { others: sums(others), complete: false, joined: false })
            }
            Some(Answer::Joined) => {
                Ok(Exchanged { others: HashMap::new(), complete: true, joined: true })
            }
            Some(Answer::Fail) => Err(PresenceError::Unavailable("scripted".into())),
            Some(Answer::Hang) => std::future::pending().await,
        }
    }

    async fn others(&self, _name: &CounterName) -> Result<Presence, PresenceError> {
        Ok(counts(5, 4))
    }

    async fn leave(&self) -> Result<(), PresenceError> {
        *self.left.lock().unwrap() = true;
        Ok(())
    }
}

impl Script {
    fn answer(&self, answer: Answer) {
        self.answers.lock().unwrap().push_back(answer);
    }

    /// The shares of the last exchange, and how many exchanges there were.
    fn last_sent(&self) -> (Vec<(String, Presence)>, usize) {
        let sent = self.sent.lock().unwrap();
        (sent.last().cloned().unwrap_or_default(), sent.len())
    }
}

fn sums(others: Vec<(&str, Presence)>) -> HashMap<CounterName, Presence> {
    others.into_iter().map(|(name, presence)| (counter(name), presence)).collect()
}

fn counter(name: &str) -> CounterName {
    CounterName::parse(name).expect("name")
}

fn counts(watchers: u64, users: u64) -> Presence {
    Presence { watchers, users }
}

fn share(name: &str, watchers: u64, users: u64) -> (String, Presence) {
    (name.to_owned(), counts(watchers, users))
}

/// Two counters with topics on this node.
struct Node {
    presence: SharedPresence<Arc<Script>>,
    script: Arc<Script>,
    a: Arc<Topic>,
    b: Arc<Topic>,
}

impl Node {
    fn new() -> Self {
        let script = Arc::new(Script::default());
        let presence = SharedPresence::new(Arc::clone(&script), Duration::from_secs(10));
        Self { presence, script, a: Topic::new(4, 0), b: Topic::new(4, 0) }
    }

    async fn tick(&self, topics: &[(&str, &Arc<Topic>)]) {
        let watched = topics
            .iter()
            .map(|(name, topic)| WatchedTopic::new(counter(name), Arc::clone(topic)))
            .collect();
        self.presence.tick(watched).await;
    }

    async fn tick_both(&self) {
        self.tick(&[("a", &self.a), ("b", &self.b)]).await;
    }
}

fn watch(topic: &Arc<Topic>, socket: u64) -> Subscription {
    topic.subscribe(User::Anonymous(socket))
}

#[tokio::test(start_paused = true)]
async fn a_tick_sends_only_the_counts_that_changed_and_a_zero_for_counters_no_longer_watched() {
    let node = Node::new();
    let a1 = watch(&node.a, 1);
    let _a2 = watch(&node.a, 2);
    let _b1 = watch(&node.b, 3);
    node.tick_both().await;
    assert_eq!(node.script.last_sent(), (vec![share("a", 2, 2), share("b", 1, 1)], 1));

    node.tick_both().await;
    assert_eq!(node.script.last_sent(), (vec![], 2), "nothing changed, nothing sent");

    drop(a1);
    node.tick_both().await;
    assert_eq!(node.script.last_sent(), (vec![share("a", 1, 1)], 3));

    // A subscription that came and went between two ticks changes nothing to send.
    drop(watch(&node.b, 4));
    node.tick_both().await;
    assert_eq!(node.script.last_sent(), (vec![], 4));

    // b's topic is gone from this node (nobody watches it): its share is removed.
    node.tick(&[("a", &node.a)]).await;
    assert_eq!(node.script.last_sent(), (vec![share("b", 0, 0)], 5));
    node.tick(&[("a", &node.a)]).await;
    assert_eq!(node.script.last_sent(), (vec![], 6), "and only once");
}

#[tokio::test(start_paused = true)]
async fn the_announced_counts_are_this_nodes_plus_the_others_and_change_only_when_either_does() {
    let node = Node::new();
    let _a1 = watch(&node.a, 1);
    node.script.answer(Answer::Others(vec![("a", counts(2, 1))]));
    node.tick_both().await;
    assert_eq!(node.a.presence_announced(), Announced { number: 1, presence: counts(3, 2) });
    assert_eq!(node.a.presence_now(), counts(3, 2), "reads add the others too");
    assert_eq!(node.a.local_presence(), counts(1, 1));
    assert_eq!(node.b.presence_announced().number, 0, "b is watched by nobody anywhere");

    node.script.answer(Answer::Others(vec![("a", counts(2, 1))]));
    node.tick_both().await;
    assert_eq!(node.a.presence_announced().number, 1, "the same counts: no announcement");

    // The other nodes' watchers left: the next tick says so.
    node.tick_both().await;
    assert_eq!(node.a.presence_announced(), Announced { number: 2, presence: counts(1, 1) });

    // Another node alone watches b.
    node.script.answer(Answer::Others(vec![("b", counts(4, 4))]));
    node.tick_both().await;
    assert_eq!(node.b.presence_announced(), Announced { number: 1, presence: counts(4, 4) });
}

#[tokio::test(start_paused = true)]
async fn an_answer_of_changed_sums_only_leaves_the_other_counters_as_they_were() {
    let node = Node::new();
    let _a1 = watch(&node.a, 1);
    node.script.answer(Answer::Others(vec![("a", counts(2, 2)), ("b", counts(1, 1))]));
    node.tick_both().await;
    node.script.answer(Answer::Changed(vec![("b", counts(0, 0))]));
    node.tick_both().await;
    assert_eq!(node.a.presence_announced(), Announced { number: 1, presence: counts(3, 3) });
    assert_eq!(node.b.presence_announced(), Announced { number: 2, presence: counts(0, 0) });
}

#[tokio::test(start_paused = true)]
async fn while_the_backend_fails_the_others_last_counts_hold_until_the_expiry_then_only_this_node_counts()
 {
    let node = Node::new();
    let _a1 = watch(&node.a, 1);
    node.script.answer(Answer::Others(vec![("a", counts(2, 2))]));
    node.tick_both().await;
    assert_eq!(node.a.presence_announced().presence, counts(3, 3));

    // Failing from now on; this node's own changes are still announced every tick.
    for _ in 0..20 {
        node.script.answer(Answer::Fail);
    }
    let _a2 = watch(&node.a, 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    node.tick_both().await;
    assert_eq!(node.a.presence_announced().presence, counts(4, 4), "own change, others kept");
    tokio::time::advance(Duration::from_millis(8_500)).await;
    node.tick_both().await;
    assert_eq!(node.a.presence_announced().presence, counts(4, 4), "9.5 s: still within expiry");
    tokio::time::advance(Duration::from_secs(1)).await;
    node.tick_both().await;
    assert_eq!(node.a.presence_announced().presence, counts(2, 2), "past the expiry: own only");

    // Every failed tick asks to send everything again, and the next success does.
    node.script.answers.lock().unwrap().clear();
    node.tick_both().await;
    assert_eq!(node.script.last_sent().0, vec![share("a", 2, 2), share("b", 0, 0)]);
    node.tick_both().await;
    assert_eq!(node.script.last_sent().0, vec![]);
}

#[tokio::test(start_paused = true)]
async fn a_node_the_backend_had_forgotten_sends_all_its_counts_again() {
    let node = Node::new();
    let _a1 = watch(&node.a, 1);
    // The first exchange always joins: that sends nothing more.
    node.script.answer(Answer::Joined);
    node.tick_both().await;
    node.tick_both().await;
    assert_eq!(node.script.last_sent(), (vec![], 2));
    // Later, the node's share had expired and was swept (it was cut off for long).
    node.script.answer(Answer::Joined);
    node.tick_both().await;
    node.tick_both().await;
    assert_eq!(node.script.last_sent(), (vec![share("a", 1, 1), share("b", 0, 0)], 4));
}

#[tokio::test(start_paused = true)]
async fn a_hung_exchange_is_given_up_after_its_timeout_and_counts_as_failed() {
    let node = Node::new();
    let _a1 = watch(&node.a, 1);
    node.script.answer(Answer::Hang);
    let started = Instant::now();
    node.tick_both().await;
    assert_eq!(started.elapsed(), EXCHANGE_TIMEOUT);
    assert_eq!(node.a.presence_announced().presence, counts(1, 1), "never heard: own only");
    node.tick_both().await;
    assert_eq!(node.script.last_sent().0, vec![share("a", 1, 1), share("b", 0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn leaving_removes_the_share_once_and_no_tick_exchanges_after_it() {
    let node = Node::new();
    let _a1 = watch(&node.a, 1);
    node.tick_both().await;
    node.presence.leave().await;
    assert!(*node.script.left.lock().unwrap());
    node.tick_both().await;
    assert_eq!(node.script.last_sent().1, 1, "no exchange after leaving");
    assert_eq!(node.presence.others(&counter("z")).await.expect("others"), counts(5, 4));
}

#[tokio::test(start_paused = true)]
async fn local_presence_announces_the_nodes_own_counts_as_before() {
    let topic = Topic::new(4, 0);
    let _one = watch(&topic, 1);
    let _two = topic.subscribe(User::Principal(Arc::from("alice")));
    LocalPresence.tick(vec![WatchedTopic::new(counter("a"), Arc::clone(&topic))]).await;
    assert_eq!(topic.presence_announced(), Announced { number: 1, presence: counts(2, 2) });
    assert_eq!(LocalPresence.others(&counter("a")).await.expect("others"), Presence::default());
}
