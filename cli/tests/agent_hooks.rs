//! The agent's webhooks end to end: real agents on loopback multicast
//! posting to a real HTTP receiver.

use crate::agent;
use crate::process;

use agent::{Agent, Hook, Net};

fn hook_config(url: &str, retries: u32) -> String {
    format!(
        "[[webhook]]\nurl = \"{url}\"\nbatch = 10\nretries = {retries}\n\
         backoff = \"10ms\"\nbackoff_max = \"20ms\"\ntimeout = \"2s\"\n"
    )
}

fn keys_of(items: &[serde_json::Value]) -> Vec<String> {
    items
        .iter()
        .filter(|i| i["type"] == "invalidate")
        .flat_map(|i| i["keys"].as_array().cloned().unwrap_or_default())
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_post_on_one_agent_reaches_the_webhook_of_the_other_in_order() {
    let net = Net::new();
    let hook = Hook::start(0);
    let a = Agent::start(&net, "a", "");
    let _b = Agent::start(&net, "b", &hook_config(&hook.url, 5));
    for i in 0..25 {
        a.invalidate(&[&format!("k{i}")]);
    }
    let items = hook.wait("the 25 keys", |items| keys_of(items).len() >= 25);
    let want: Vec<String> = (0..25).map(|i| format!("k{i}")).collect();
    assert_eq!(keys_of(&items), want);
    // The agent was not posting before it started: the first POST begins
    // with a reset saying so, and no other reset follows.
    assert_eq!(
        (items[0]["type"].as_str(), items[0]["reason"].as_str()),
        (Some("reset"), Some("agent_started"))
    );
    assert!(items[1..].iter().all(|i| i["type"] != "reset"), "{items:?}");
    assert!(hook
        .posts
        .lock()
        .unwrap()
        .iter()
        .all(|p| p.as_array().unwrap().len() <= 10));
}

#[test]
fn a_webhook_that_failed_10_times_gets_a_reset_first_when_it_recovers() {
    let net = Net::new();
    let hook = Hook::start(10);
    let a = Agent::start(&net, "a", "");
    let _b = Agent::start(&net, "b", &hook_config(&hook.url, 3));
    // Ten failures in a row while events keep coming: batches given up.
    let end = std::time::Instant::now() + process::LIMIT;
    let mut i = 0;
    while hook.failed.load(std::sync::atomic::Ordering::SeqCst) < 10 {
        assert!(
            std::time::Instant::now() < end,
            "the webhook was not tried 10 times"
        );
        a.invalidate(&[&format!("maybe-lost-{i}")]);
        i += 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    a.invalidate(&["after"]);
    let items = hook.wait("the key after recovery", |items| {
        keys_of(items).contains(&"after".to_owned())
    });
    // What was given up is covered: a reset comes before "after".
    let after = items.iter().position(|i| i["keys"][0] == "after").unwrap();
    let reset = items.iter().rposition(|i| i["type"] == "reset").unwrap();
    assert!(reset < after, "{items:?}");
    assert_ne!(items[reset]["reason"], "agent_started", "{items:?}");
    assert_eq!(keys_of(&items).last().unwrap(), "after");
}
