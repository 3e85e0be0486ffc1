//! Runs every scenario of `protocol/reconnect-scenarios.json` against the machine: each step's
//! event must produce exactly the step's actions, in order.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// The shared file, read at compile time so the test needs no working directory.
const SCENARIOS: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../protocol/reconnect-scenarios.json"));

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(rename = "$comment")]
    _comment: Vec<String>,
    rules: RulesJson,
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RulesJson {
    backoff_min_ms: u64,
    backoff_max_ms: u64,
    backoff_factor: f64,
    min_uptime_ms: u64,
    connect_timeout_ms: u64,
    ping_interval_ms: u64,
    max_advised_delay_ms: u64,
    token_retry_ms: u64,
}

impl From<&RulesJson> for Rules {
    fn from(json: &RulesJson) -> Self {
        Rules {
            backoff: Backoff {
                min: Duration::from_millis(json.backoff_min_ms),
                max: Duration::from_millis(json.backoff_max_ms),
                factor: json.backoff_factor,
            },
            min_uptime: Duration::from_millis(json.min_uptime_ms),
            connect_timeout: Duration::from_millis(json.connect_timeout_ms),
            ping_interval: Duration::from_millis(json.ping_interval_ms),
            max_advised_delay: Duration::from_millis(json.max_advised_delay_ms),
            token_retry: Duration::from_millis(json.token_retry_ms),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    /// Which rules of docs/PROTOCOL.md the scenario checks.
    rules: Vec<String>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    event: Event,
    expect: Vec<Action>,
}

fn file() -> File {
    serde_json::from_str(SCENARIOS).expect("protocol/reconnect-scenarios.json is valid")
}

#[test]
fn every_shared_scenario_passes() {
    let file = file();
    let rules = Rules::from(&file.rules);
    let mut failures = Vec::new();
    for scenario in &file.scenarios {
        let mut machine = Machine::new(rules);
        for (index, step) in scenario.steps.iter().enumerate() {
            let mut actions = Vec::new();
            machine.handle(step.event.clone(), &mut actions);
            if actions != step.expect {
                failures.push(format!(
                    "{}: step {} ({}):\n  expected {}\n  got      {}",
                    scenario.name,
                    index + 1,
                    serde_json::to_string(&step.event).unwrap_or_default(),
                    serde_json::to_string(&step.expect).unwrap_or_default(),
                    serde_json::to_string(&actions).unwrap_or_default(),
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{} scenario(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// The file's rules are the ones the clients ship with, so the scenarios check the real numbers.
#[test]
fn the_file_uses_the_default_rules() {
    assert_eq!(Rules::from(&file().rules), Rules::default());
}

/// Deleting a scenario must not leave a rule or a class of close codes unchecked.
#[test]
fn the_scenarios_cover_every_rule_and_close_code_class() {
    let file = file();
    let rules: BTreeSet<&str> =
        file.scenarios.iter().flat_map(|s| s.rules.iter().map(String::as_str)).collect();
    for rule in [
        "established",
        "connect-timeout",
        "backoff",
        "min-uptime",
        "resume",
        "versions",
        "jumps",
        "gap",
        "advised-delay",
        "ping",
        "token-expired",
        "token-in-band",
        "stop",
        "upgrade-refused",
        "subscribe-refused",
        "ended",
        "slow-reader",
        "epoch",
        "wake",
        "rotation",
    ] {
        assert!(rules.contains(rule), "no scenario checks the rule {rule:?}");
    }
    let codes: BTreeSet<u16> = file
        .scenarios
        .iter()
        .flat_map(|s| &s.steps)
        .filter_map(|step| match step.event {
            Event::Closed { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    for code in [1000, 1002, 1007, 1008, 1009, 1011, 1012, 1013, 4000, 4001, 4501, 4502, 4503, 4599]
    {
        assert!(codes.contains(&code), "no scenario closes with {code}");
    }
    let names: BTreeSet<&str> = file.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), file.scenarios.len(), "scenario names are unique");
}

#[test]
fn advice_is_read_from_a_close_reason() {
    assert_eq!(advised_in("server is restarting; reconnect after 1500 ms"), Some(1500));
    assert_eq!(advised_in("reconnect after 0 ms"), Some(0));
    assert_eq!(advised_in("reconnect after 12ms, please"), Some(12));
    assert_eq!(advised_in("reconnect with since=4"), None);
    assert_eq!(advised_in("reconnect after soon"), None);
    assert_eq!(advised_in("reconnect after 5 s"), None);
    assert_eq!(advised_in("reconnect after 99999999999999999999999 ms"), None);
}
