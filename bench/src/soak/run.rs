//! The soak's run: starts the processes, samples them every interval,
//! drains, and stops them (by PID, also on error and on SIGINT / SIGTERM,
//! which end the run early with what was measured so far).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::agents::AgentPath;
use super::lines::ChildProc;
use super::nodes::{PubSample, SubSample};
use super::procfs;
use super::samples::{
    cpu_pct, flatness, histogram, merge, Counters, Latency, PathSample, ProcSample,
};
use super::{PathTotals, Sample, SoakArgs, SoakReport, RSS_TOLERANCE};
use crate::agent::process::{Agent, Cluster};
use crate::si;

/// Set by SIGINT or SIGTERM: the run ends at the next check.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM end the run early instead of killing this process
/// (which would leave the agents running).
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe)
        // and is a plain `extern "C" fn` that lives as long as the process.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Sleeps until `at`; false if interrupted first.
fn wait_until(at: Instant) -> bool {
    loop {
        if interrupted() {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(100)));
    }
}

/// A fresh group in 239.255.0.0/16 and a port, picked at random.
fn group() -> std::net::SocketAddr {
    let g: [u8; 2] = rand::random();
    std::net::SocketAddr::from((
        [239, 255, g[0], g[1]],
        20_000 + rand::random::<u16>() % 30_000,
    ))
}

/// How long a child may take to answer a sample.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long receivers may take to get the last events after publishing.
const DRAIN: Duration = Duration::from_secs(30);
/// Most errors kept.
const MAX_ERRORS: usize = 20;

/// A process sampled from `/proc`.
struct Proc {
    pid: u32,
    last_cpu: Option<f64>,
}

/// What the sampler keeps between samples (nothing that grows with the
/// run but the samples themselves, whose number is bounded by the args).
struct Sampler {
    t0: Instant,
    last: Instant,
    procs: Vec<Proc>,
    subs_before: Vec<Counters>,
    published: (u64, bool),
    published_before: u64,
    agent_before: Counters,
    accepted_before: u64,
    total_mc: Histogram<u64>,
    total_agents: Histogram<u64>,
    errors: Vec<String>,
}

impl Sampler {
    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            eprintln!("\rsoak: {e}");
            self.errors.push(e);
        }
    }

    /// Every subscriber's cumulative counts now (the last known where one
    /// does not answer) and the interval's merged latency.
    fn ask_subs(&mut self, subs: &mut [ChildProc]) -> (Vec<Counters>, Histogram<u64>) {
        let mut hist = histogram();
        let mut now = Vec::new();
        for (i, s) in subs.iter_mut().enumerate() {
            let before = self.subs_before.get(i).cloned().unwrap_or_default();
            match s.sample(ANSWER_WITHIN).and_then(|j| {
                serde_json::from_str::<SubSample>(&j)
                    .map_err(|e| format!("{}: bad sample: {e}", s.name))
            }) {
                Ok(x) => {
                    merge(&mut hist, &x.hist);
                    now.push(x.counts);
                }
                Err(e) => {
                    self.error(e);
                    now.push(before);
                }
            }
        }
        (now, hist)
    }

    fn ask_pub(&mut self, p: &mut ChildProc) {
        match p.sample(ANSWER_WITHIN).and_then(|j| {
            serde_json::from_str::<PubSample>(&j).map_err(|e| format!("publisher: bad sample: {e}"))
        }) {
            Ok(x) => self.published = (x.published, x.done),
            Err(e) => self.error(e),
        }
    }

    /// One sample of every process and path.
    fn take(
        &mut self,
        publisher: &mut ChildProc,
        subs: &mut [ChildProc],
        agents: Option<&AgentPath>,
    ) -> Sample {
        let now = Instant::now();
        // The first sample has no interval (and no CPU figure).
        let secs = if self.last == self.t0 && now - self.t0 < Duration::from_secs(1) {
            0.0
        } else {
            (now - self.last).as_secs_f64()
        };
        self.last = now;
        let procs = (self.procs.iter_mut())
            .map(|p| {
                let cpu = procfs::cpu_s(p.pid);
                let s = ProcSample {
                    rss_kib: procfs::rss_kib(p.pid),
                    cpu_pct: cpu_pct(cpu, p.last_cpu, secs),
                };
                p.last_cpu = cpu;
                s
            })
            .collect();
        self.ask_pub(publisher);
        let (counts, hist) = self.ask_subs(subs);
        let _ = self.total_mc.add(&hist);
        let multicast = PathSample::new(
            &counts,
            &self.subs_before,
            (self.published.0, self.published_before),
            secs,
            &hist,
        );
        self.subs_before = counts;
        self.published_before = self.published.0;
        let agents = agents.map(|a| {
            let x = a.sample();
            let _ = self.total_agents.add(&x.hist);
            let s = PathSample::new(
                std::slice::from_ref(&x.counts),
                std::slice::from_ref(&self.agent_before),
                (x.accepted, self.accepted_before),
                secs,
                &x.hist,
            );
            self.agent_before = x.counts;
            self.accepted_before = x.accepted;
            s
        });
        Sample {
            t_s: (now - self.t0).as_secs_f64(),
            procs,
            multicast,
            agents,
        }
    }
}

/// Runs the soak; the processes are stopped when this returns, however.
pub(super) fn soak(args: &SoakArgs, dir: &Path) -> Result<SoakReport, String> {
    catch_signals();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let say = |m: String| {
        if !args.quiet {
            eprintln!("\rsoak: {m}");
        }
    };
    let g = group();
    let max_time = duration * 2 + Duration::from_secs(600);
    let mut subs = Vec::new();
    for i in 1..=args.subscribers {
        subs.push(ChildProc::spawn(
            &format!("sub-{i}"),
            &[
                "soak-sub".into(),
                "--group".into(),
                g.to_string(),
                "--name".into(),
                format!("soak-sub-{i}"),
                "--max-time".into(),
                format!("{}s", max_time.as_secs()),
            ],
        )?);
    }
    let ready_by = Instant::now() + Duration::from_secs(20);
    for s in &mut subs {
        s.expect("READY", ready_by)?;
    }
    let mut publisher = ChildProc::spawn(
        "publisher",
        &[
            "soak-pub".into(),
            "--group".into(),
            g.to_string(),
            "--rate".into(),
            args.rate.0.to_string(),
            "--duration".into(),
            format!("{}ms", duration.as_millis()),
        ],
    )?;
    publisher.expect("READY", Instant::now() + Duration::from_secs(20))?;
    say(format!(
        "publisher and {} subscribers on {g} (interface 127.0.0.1, TTL 0)",
        subs.len()
    ));

    let mut agent_procs = None;
    let mut path = None;
    if args.agents.on() {
        let bin = crate::agent::process::find_binary(args.cachecast.as_deref())?;
        let cl = Cluster {
            group: group(),
            name: format!("soak-{}-{:08x}", std::process::id(), rand::random::<u32>()),
        };
        let a = Agent::start(&bin, "A", &cl, None, dir.join("agent-a.log"))?;
        let b = Agent::start(&bin, "B", &cl, None, dir.join("agent-b.log"))?;
        path = Some(AgentPath::start(&a, &b, args.agent_rate.0, duration)?);
        say(format!(
            "agents A (pid {}, {}) and B (pid {}, {}) on {}",
            a.pid, a.http, b.pid, b.http, cl.group
        ));
        agent_procs = Some((a, b));
    }

    let mut names = vec!["publisher".to_owned()];
    let mut pids = vec![publisher.pid()];
    for s in &subs {
        names.push(s.name.clone());
        pids.push(s.pid());
    }
    if let Some((a, b)) = &agent_procs {
        names.extend(["agent-A".to_owned(), "agent-B".to_owned()]);
        pids.extend([a.pid, b.pid]);
    }
    names.push("bench".into());
    pids.push(std::process::id());

    let t0 = Instant::now();
    let mut sampler = Sampler {
        t0,
        last: t0,
        procs: (pids.iter())
            .map(|&pid| Proc {
                pid,
                last_cpu: procfs::cpu_s(pid),
            })
            .collect(),
        subs_before: vec![Counters::default(); subs.len()],
        published: (0, false),
        published_before: 0,
        agent_before: Counters::default(),
        accepted_before: 0,
        total_mc: histogram(),
        total_agents: histogram(),
        errors: Vec::new(),
    };
    // Minute 0: set up, nothing published yet.
    let mut samples = vec![sampler.take(&mut publisher, &mut subs, path.as_ref())];
    publisher.send("GO")?;
    if let Some(p) = &path {
        p.go();
    }
    let every = args.sample;
    let n = (duration.as_secs_f64() / every.as_secs_f64()).ceil() as u32;
    let mut completed = true;
    for k in 1..=n {
        let at = t0 + (every * k).min(duration);
        if !wait_until(at) {
            say("interrupted: stopping".into());
            completed = false;
            break;
        }
        let s = sampler.take(&mut publisher, &mut subs, path.as_ref());
        if !args.quiet {
            eprintln!("\rsoak: {}", progress(&s, &names, duration));
        }
        samples.push(s);
        let dead: Vec<String> = std::iter::once(&mut publisher)
            .chain(subs.iter_mut())
            .filter_map(|c| (!c.alive()).then(|| c.name.clone()))
            .chain(agent_procs.iter_mut().flat_map(|(a, b)| {
                [(&mut *a, "agent-A"), (&mut *b, "agent-B")]
                    .into_iter()
                    .filter_map(|(x, n)| (!x.alive()).then(|| n.to_owned()))
            }))
            .collect();
        if !dead.is_empty() {
            sampler.error(format!("exited during the run: {}", dead.join(", ")));
            completed = false;
            break;
        }
    }
    let ran_s = t0.elapsed().as_secs_f64();

    // Drain: what was published reaches every receiver, or the deadline
    // passes. The latency of these last events counts in the totals.
    let drain_end = Instant::now() + if completed { DRAIN } else { Duration::ZERO };
    let (sub_counts, agent_counts) = loop {
        sampler.ask_pub(&mut publisher);
        let (counts, hist) = sampler.ask_subs(&mut subs);
        let _ = sampler.total_mc.add(&hist);
        let a = path.as_ref().map(|p| {
            let x = p.sample();
            let _ = sampler.total_agents.add(&x.hist);
            x
        });
        let (published, done) = sampler.published;
        let subs_done = counts.iter().all(|c| c.delivered + c.lost >= published);
        let agents_done = match (&path, &a) {
            (Some(p), Some(x)) => p.published() && x.counts.delivered + x.counts.lost >= x.accepted,
            _ => true,
        };
        if (done && subs_done && agents_done) || Instant::now() >= drain_end || interrupted() {
            break (counts, a);
        }
        std::thread::sleep(Duration::from_millis(250));
    };

    // Stop everything: the subscribers and the publisher at the end of
    // their input, the agents by SIGTERM.
    for s in &mut subs {
        s.finish(Duration::from_secs(5));
    }
    publisher.finish(Duration::from_secs(5));
    let agent_errors = path.as_ref().map(|p| p.errors()).unwrap_or_default();
    if let Some(p) = path {
        p.stop();
    }
    if let Some((a, b)) = agent_procs {
        for ag in [a, b] {
            let label = ag.label;
            if ag.stop(Duration::from_secs(5)).is_none_or(|s| !s.success()) {
                sampler.error(format!("agent {label} did not exit cleanly on SIGTERM"));
            }
        }
    }
    for e in agent_errors {
        sampler.error(format!("agent path: {e}"));
    }

    let p99s = |f: fn(&Sample) -> Option<&PathSample>| {
        let v: Vec<f64> = (samples.iter())
            .filter_map(|s| f(s)?.latency.map(|l| l.p99_us))
            .collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (!v.is_empty()).then_some((lo, hi))
    };
    let multicast = PathTotals::new(
        sampler.published.0,
        &sub_counts,
        Latency::of(&sampler.total_mc),
        p99s(|s| Some(&s.multicast)),
    );
    let agents = agent_counts.map(|x| {
        let mut t = PathTotals::new(
            x.accepted,
            std::slice::from_ref(&x.counts),
            Latency::of(&sampler.total_agents),
            p99s(|s| s.agents.as_ref()),
        );
        t.refused = x.refused;
        t
    });
    let warmup_s = args.warmup.as_secs_f64();
    let flat = (names.iter().enumerate())
        .map(|(i, name)| {
            let points: Vec<(f64, Option<u64>)> = (samples.iter())
                .map(|s| (s.t_s, s.procs.get(i).and_then(|p| p.rss_kib)))
                .collect();
            flatness(name, &points, warmup_s, RSS_TOLERANCE)
        })
        .collect();
    Ok(SoakReport::new(
        args,
        ran_s,
        completed,
        names,
        samples,
        flat,
        multicast,
        agents,
        sampler.errors,
    ))
}

/// One progress line: time, per-subscriber rate, p99, loss, Resets, RSS.
fn progress(s: &Sample, names: &[String], of: Duration) -> String {
    let mmss = |t: f64| format!("{}:{:02}", (t / 60.0) as u64, (t % 60.0) as u64);
    let path = |p: &PathSample| {
        format!(
            "{}/s p99 {} lost {} Resets {}",
            si(p.delivered_per_s),
            p.latency.map_or("—".into(), |l| crate::us(l.p99_us)),
            p.counts.lost,
            p.counts.resets_total()
        )
    };
    let rss: Vec<String> = (names.iter().zip(&s.procs))
        .map(|(n, p)| {
            let mib = p
                .rss_kib
                .map_or("—".into(), |k| format!("{:.1}", k as f64 / 1024.0));
            format!("{n} {mib}")
        })
        .collect();
    format!(
        "{}/{}  multicast {}{}  RSS MiB: {}",
        mmss(s.t_s),
        mmss(of.as_secs_f64()),
        path(&s.multicast),
        s.agents
            .as_ref()
            .map_or(String::new(), |a| format!("  agents {}", path(a))),
        rss.join(", ")
    )
}
