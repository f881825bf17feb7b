//! `cargo xtask soak --minutes N`: snoop under churn for N minutes, with a
//! checker that holds every delivered packet against the membership that
//! should have decided it.
//!
//! A sender sends each of 8 groups 50 times a second, every packet stamped
//! with its group's sequence number; a packet socket at each host records
//! which arrived. Meanwhile hosts (IGMPv2 and IGMPv3 alike) join and leave
//! groups at random, ports are added and removed, snoop is restarted with
//! --keep-state (cleanly and with kill -9), and a host storms reports. Every
//! second the checker takes the packets sent 2-3 s before: a host that was a
//! steady member of the group must have it (else a loss), a host that was a
//! steady non-member must not (else a leak). "Steady" leaves out the join and
//! leave transitions (1 s, 1.5 s; counted from snoop's restart when it was
//! down, and 5.5 s for a leave sent while it was down, which nobody hears:
//! the resumed membership ages out). Losses of steady members while snoop was down or restarting are
//! counted apart: the data path must carry them across restarts.
//!
//! The `snoop` under test is $SNOOP_BIN; `--seed N` repeats a run.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use snoop_tests::{
    lab::{self, v3_report_packet, Lab, LabOptions, Membership, DATA_PORT},
    rss_kb,
};

const GROUPS: usize = 8;
const RATE_PER_GROUP: u64 = 50;
const JOIN_GRACE: Duration = Duration::from_millis(1000);
const LEAVE_GRACE: Duration = Duration::from_millis(1500);
/// A leave sent while no snoop ran is not heard (an IGMPv2 host sends it
/// once): the membership resumed from the pins ends when it ages out, a
/// group membership interval (5 s with the fast timers) after the restart.
const LOST_LEAVE_GRACE: Duration = Duration::from_millis(5500);
/// Packets are judged this long after they were sent (they have arrived).
const JUDGE_LAG: Duration = Duration::from_secs(2);
/// The fast timers, keep-state restarts, and groups nobody joined reaching
/// nobody: any packet a non-member gets is a leak.
fn snoop_args() -> Vec<&'static str> {
    [snoop_tests::FAST_TIMERS, &["--keep-state", "--unregistered", "routers"]].concat()
}

fn group(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(239, 10, 0, index as u8 + 1)
}

/// A small deterministic generator (xorshift64*), so a seed repeats a run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// Which sequence numbers of each group one host received.
#[derive(Default)]
struct Received {
    bits: Vec<Vec<u64>>,
}

impl Received {
    fn set(&mut self, group: usize, seq: u64) {
        if self.bits.len() < GROUPS {
            self.bits.resize(GROUPS, Vec::new());
        }
        let words = &mut self.bits[group];
        let word = (seq / 64) as usize;
        if words.len() <= word {
            words.resize(word + 1024, 0);
        }
        words[word] |= 1 << (seq % 64);
    }

    fn has(&self, group: usize, seq: u64) -> bool {
        self.bits.get(group).and_then(|w| w.get((seq / 64) as usize)).is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }
}

/// A receiving host: what it got, and its membership over time.
struct Receiver {
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    /// Per group: (time, joined) at every change.
    changes: Vec<Vec<(Instant, bool)>>,
    sockets: HashMap<usize, Membership>,
    /// Removed from the lab at this time: judged only before it.
    removed: Option<Instant>,
}

impl Receiver {
    fn start(lab: &Lab, host: &str) -> Result<Self> {
        let fd = lab::capture_socket(&lab.host(host).netns, "eth0", Duration::from_millis(50))?;
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (received, stop) = (received.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: a valid buffer of its length.
                    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                    if n < 14 + 28 + 9 {
                        continue;
                    }
                    let frame = &buf[..n as usize];
                    let ip = 14;
                    let udp = ip + usize::from(frame[ip] & 0x0f) * 4;
                    let is_data = frame[12..14] == [0x08, 0x00]
                        && frame[ip + 9] == 17
                        && frame.get(udp + 2..udp + 4) == Some(&DATA_PORT.to_be_bytes());
                    let dst = &frame[ip + 16..ip + 20];
                    if !is_data || dst[..3] != [239, 10, 0] || frame.len() < udp + 8 + 9 {
                        continue;
                    }
                    let index = usize::from(frame[udp + 8]);
                    let seq = u64::from_le_bytes(frame[udp + 9..udp + 17].try_into().expect("8 bytes"));
                    if index < GROUPS {
                        received.lock().expect("lock").set(index, seq);
                    }
                }
            });
        }
        Ok(Self { received, stop, changes: vec![Vec::new(); GROUPS], sockets: HashMap::new(), removed: None })
    }

    /// Joined steadily at `at` (past the join transition); `restarted` moves
    /// a transition that happened while snoop was down to its restart.
    fn steady(&self, group: usize, at: Instant, downtimes: &[(Instant, Instant)]) -> Option<bool> {
        let Some(&(changed, joined)) = self.changes[group].iter().rev().find(|(t, _)| *t <= at) else {
            return Some(false); // never joined
        };
        // Seen by snoop only once it runs again (a leave: not at all).
        let downtime = downtimes.iter().find(|(down, up)| changed >= *down && changed <= *up);
        let grace = match (joined, downtime.is_some()) {
            (true, _) => JOIN_GRACE,
            (false, false) => LEAVE_GRACE,
            (false, true) => LOST_LEAVE_GRACE,
        };
        let seen = downtime.map_or(changed, |d| d.1);
        (at >= seen + grace).then_some(joined)
    }
}

#[derive(Default)]
struct Totals {
    judged: u64,
    leaks: u64,
    losses: u64,
    lost_across_restarts: u64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().skip_while(|a| *a != name).nth(1).cloned();
    let minutes: f64 = value("--minutes").map_or(Ok(1.0), |m| m.parse()).context("--minutes")?;
    let seed: u64 = value("--seed").map_or(Ok(0x5eed), |s| s.parse()).context("--seed")?;
    let snoop: PathBuf = std::env::var_os("SNOOP_BIN").context("SNOOP_BIN not set: run `cargo xtask soak`")?.into();
    lab::remove_stale_labs()?;
    println!("soak: {minutes} min, seed {seed}, {GROUPS} groups x {RATE_PER_GROUP} pps; checker judges every second");

    let mut rng = Rng(seed.max(1));
    let mut lab = Lab::new("soak", 8, &LabOptions::default())?;
    // h0 sends, h7 storms, h1..h6 receive; every other receiver speaks IGMPv2.
    let mut receivers: HashMap<String, Receiver> = HashMap::new();
    for i in 1..=6 {
        let host = format!("h{i}");
        if i % 2 == 0 {
            lab.set_igmp_version(&host, 2)?;
        }
        receivers.insert(host.clone(), Receiver::start(&lab, &host)?);
    }
    lab.start_snoop(&snoop, &snoop_args())?;

    let sent: Arc<Mutex<Vec<Vec<Instant>>>> = Arc::new(Mutex::new(vec![Vec::new(); GROUPS]));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (socket, sent, stop) = (lab.sender("h0")?, sent.clone(), stop.clone());
        thread::spawn(move || -> Result<()> {
            let tick = Duration::from_secs(1) / RATE_PER_GROUP as u32;
            let mut next = Instant::now();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for index in 0..GROUPS {
                    let mut payload = [0u8; 32];
                    payload[0] = index as u8;
                    payload[1..9].copy_from_slice(&seq.to_le_bytes());
                    sent.lock().expect("lock")[index].push(Instant::now());
                    socket.send_payload(group(index), &payload)?;
                }
                seq += 1;
                next += tick;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(())
        })
    };

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let (mut changes, mut restarts, mut kills, mut added, mut removed, mut storms) = (0, 0, 0, 0, 0, 0);
    let mut downtimes: Vec<(Instant, Instant)> = Vec::new();
    let mut rss: Vec<(f64, u32, u64)> = Vec::new();
    let mut totals = Totals::default();
    let mut judged_until = start;
    let mut next_host = 8;
    // About ten restarts a run (at least 20 s apart), so a long run also shows
    // whether one controller's RSS grows over minutes.
    let restart_every = Duration::from_secs_f64((minutes * 6.0).max(20.0));
    let (mut next_restart, mut next_churn, mut next_storm, mut next_rss, mut next_judge) = (
        start + restart_every,
        start + Duration::from_secs(13),
        start + Duration::from_secs(29),
        start,
        start + JUDGE_LAG + Duration::from_secs(1),
    );
    let mut storm: Option<(Arc<AtomicBool>, thread::JoinHandle<u64>)> = None;
    let mut next_progress = start + Duration::from_secs(60);
    while Instant::now() < end {
        let now = Instant::now();
        // A membership change every 400 ms.
        let live: Vec<String> = receivers.iter().filter(|(_, r)| r.removed.is_none()).map(|(h, _)| h.clone()).collect();
        if !live.is_empty() {
            let host = &live[rng.below(live.len())];
            let index = rng.below(GROUPS);
            let receiver = receivers.get_mut(host).expect("live");
            if receiver.sockets.remove(&index).is_some() {
                receiver.changes[index].push((Instant::now(), false));
            } else {
                receiver.sockets.insert(index, lab.join(host, group(index))?);
                receiver.changes[index].push((Instant::now(), true));
            }
            changes += 1;
        }
        if now >= next_restart {
            let kill = restarts % 2 == 1;
            let down = Instant::now();
            lab.stop_snoop(kill)?;
            lab.start_snoop(&snoop, &snoop_args())?;
            downtimes.push((down, Instant::now()));
            restarts += 1;
            kills += u32::from(kill);
            next_restart += restart_every;
        }
        if now >= next_churn {
            // A new host on a new port, and an old one (with its port) gone.
            let host = format!("h{next_host}");
            lab.add_host(next_host, &LabOptions::default())?;
            receivers.insert(host, Receiver::start(&lab, &format!("h{next_host}"))?);
            next_host += 1;
            added += 1;
            let candidates: Vec<String> =
                receivers.iter().filter(|(_, r)| r.removed.is_none()).map(|(h, _)| h.clone()).collect();
            if candidates.len() > 4 {
                let host = candidates[rng.below(candidates.len())].clone();
                let receiver = receivers.get_mut(&host).expect("candidate");
                receiver.removed = Some(Instant::now());
                receiver.sockets.clear();
                receiver.stop.store(true, Ordering::Relaxed);
                lab.remove_host(&host)?;
                removed += 1;
            }
            next_churn += Duration::from_secs(17);
        }
        if now >= next_storm && storm.is_none() {
            let flag = Arc::new(AtomicBool::new(false));
            let (raw, source, flag_in) = (lab.raw_sender("h7")?, lab.host("h7").ip, flag.clone());
            let handle = thread::spawn(move || {
                let mut n = 0u64;
                while !flag_in.load(Ordering::Relaxed) {
                    let g = Ipv4Addr::new(239, 200, (n >> 8) as u8, n as u8);
                    if raw.send(&v3_report_packet(source, &[g])).is_ok() {
                        n += 1;
                    }
                }
                n
            });
            storm = Some((flag, handle));
            storms += 1;
        }
        if now >= next_storm + Duration::from_secs(3) {
            if let Some((flag, handle)) = storm.take() {
                flag.store(true, Ordering::Relaxed);
                let _ = handle.join();
            }
            next_storm += Duration::from_secs(31);
        }
        if now >= next_rss {
            if let Some(pid) = lab.snoop_pid() {
                rss.push((start.elapsed().as_secs_f64(), pid, rss_kb(pid).unwrap_or(0)));
            }
            next_rss += Duration::from_secs(10);
        }
        if now >= next_judge {
            let until = now - JUDGE_LAG;
            let second = judge(&receivers, &sent.lock().expect("lock"), judged_until, until, &downtimes);
            if second.leaks + second.losses > 0 {
                println!(
                    "  {:>7.1}s  VIOLATION  leaks {} losses {} (packets sent {:.1}-{:.1}s)",
                    start.elapsed().as_secs_f64(),
                    second.leaks,
                    second.losses,
                    (judged_until - start).as_secs_f64(),
                    (until - start).as_secs_f64()
                );
            }
            totals.judged += second.judged;
            totals.leaks += second.leaks;
            totals.losses += second.losses;
            totals.lost_across_restarts += second.lost_across_restarts;
            judged_until = until;
            next_judge += Duration::from_secs(1);
        }
        if now >= next_progress {
            next_progress += Duration::from_secs(60);
            println!(
                "  {:>5.0}s  judged {}  leaks {}  losses {}  lost across restarts {}",
                start.elapsed().as_secs_f64(),
                totals.judged,
                totals.leaks,
                totals.losses,
                totals.lost_across_restarts
            );
        }
        thread::sleep(Duration::from_millis(400).saturating_sub(now.elapsed()));
    }
    if let Some((flag, handle)) = storm.take() {
        flag.store(true, Ordering::Relaxed);
        let _ = handle.join();
    }
    // The last packets are judged once they have arrived.
    thread::sleep(JUDGE_LAG);
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender thread")?;
    let last = judge(&receivers, &sent.lock().expect("lock"), judged_until, Instant::now() - JUDGE_LAG, &downtimes);
    totals.judged += last.judged;
    totals.leaks += last.leaks;
    totals.losses += last.losses;
    totals.lost_across_restarts += last.lost_across_restarts;
    let packets: usize = sent.lock().expect("lock").iter().map(Vec::len).sum();
    for receiver in receivers.values() {
        receiver.stop.store(true, Ordering::Relaxed);
    }

    println!();
    println!(
        "soak: {:.1} min; {changes} membership changes, {restarts} restarts ({kills} killed), {added} ports added, \
         {removed} removed, {storms} report storms",
        start.elapsed().as_secs_f64() / 60.0
    );
    println!("  packets sent: {packets}; judged (a steady member or non-member receiving or not): {}", totals.judged);
    println!("  violations: {} leaks, {} losses (goal: 0)", totals.leaks, totals.losses);
    println!("  lost by steady members across restarts: {} (goal: 0)", totals.lost_across_restarts);
    println!("  controller RSS (kB), every 10 s (pid changes at restarts):");
    for chunk in rss.chunks(6) {
        let line: Vec<String> = chunk.iter().map(|(t, pid, kb)| format!("{t:>6.0}s {pid} {kb}")).collect();
        println!("    {}", line.join("  "));
    }
    if totals.leaks + totals.losses + totals.lost_across_restarts > 0 {
        bail!("the soak found violations");
    }
    Ok(())
}

/// Judges the packets sent in [from, until).
fn judge(
    receivers: &HashMap<String, Receiver>,
    sent: &[Vec<Instant>],
    from: Instant,
    until: Instant,
    downtimes: &[(Instant, Instant)],
) -> Totals {
    let mut totals = Totals::default();
    for receiver in receivers.values() {
        let received = receiver.received.lock().expect("lock");
        for (index, times) in sent.iter().enumerate() {
            let first = times.partition_point(|t| *t < from);
            for (seq, at) in times.iter().enumerate().skip(first).take_while(|(_, t)| **t < until) {
                // A removed host is judged only for what it could have received.
                if receiver.removed.is_some_and(|gone| *at + Duration::from_millis(500) >= gone) {
                    continue;
                }
                let Some(member) = receiver.steady(index, *at, downtimes) else { continue };
                let got = received.has(index, seq as u64);
                totals.judged += 1;
                match (member, got) {
                    (true, false) => {
                        let restarting = downtimes.iter().any(|(down, up)| *at >= *down && *at <= *up + JOIN_GRACE);
                        if restarting {
                            totals.lost_across_restarts += 1;
                        } else {
                            totals.losses += 1;
                        }
                    }
                    (false, true) => totals.leaks += 1,
                    _ => {}
                }
            }
        }
    }
    totals
}
