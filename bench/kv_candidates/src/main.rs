//! The catalog's write and read shape against redb and fjall (see Cargo.toml for how to run).
use std::time::{Duration, Instant};
use redb::{ReadableDatabase, ReadableTable};

const TYPES: [&str; 8] = ["Observation", "Patient", "Encounter", "Condition",
    "MedicationRequest", "Procedure", "DiagnosticReport", "Immunization"];
const GROUP: u64 = 512;
const CACHE: usize = 64 << 20;
const REC: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("records");
const HIST: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("type_history");

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}
fn type_of(i: u64) -> usize { (mix(i ^ 0x5555) % 8) as usize }
fn uuid(i: u64) -> [u8; 36] {
    let (a, b) = (mix(i), mix(i.wrapping_add(0xABCDEF)));
    let hex = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut n = 0u32;
    for pos in 0..36 {
        if pos == 8 || pos == 13 || pos == 18 || pos == 23 { continue; }
        let nib = if n < 16 { (a >> (n * 4)) & 15 } else { (b >> ((n - 16) * 4)) & 15 };
        out[pos] = hex[nib as usize];
        n += 1;
    }
    out
}
fn version(i: u64) -> u64 { 1 + (i % 5) }
fn rec_key(i: u64) -> Vec<u8> {
    let t = TYPES[type_of(i)];
    let mut k = Vec::with_capacity(t.len() + 46);
    k.extend_from_slice(t.as_bytes()); k.push(0);
    k.extend_from_slice(&uuid(i)); k.push(0);
    k.extend_from_slice(&version(i).to_be_bytes());
    k
}
fn hist_key(t: usize, leaf: u64) -> Vec<u8> {
    let t = TYPES[t];
    let mut k = Vec::with_capacity(t.len() + 9);
    k.extend_from_slice(t.as_bytes()); k.push(0);
    k.extend_from_slice(&leaf.to_be_bytes());
    k
}
fn hist_val(i: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(44);
    v.extend_from_slice(&uuid(i)); v.extend_from_slice(&version(i).to_be_bytes());
    v
}
struct Rng(u64);
impl Rng { fn next(&mut self) -> u64 { self.0 = self.0.wrapping_add(1); mix(self.0) } }
fn value(r: &mut Rng) -> Vec<u8> {
    let mut v = vec![0u8; 150];
    for c in v.chunks_mut(8) { let x = r.next().to_le_bytes(); c.copy_from_slice(&x[..c.len()]); }
    v
}
fn counters(upto: u64) -> [u64; 8] {
    let mut c = [0u64; 8];
    for i in 0..upto { c[type_of(i)] += 1; }
    c
}
fn proc_field(file: &str, name: &str) -> u64 {
    let s = std::fs::read_to_string(file).unwrap_or_default();
    for l in s.lines() {
        if let Some(rest) = l.strip_prefix(name) {
            return rest.trim_start_matches(':').split_whitespace().next().unwrap_or("0").parse().unwrap_or(0);
        }
    }
    0
}
fn mem() -> String {
    format!("RSS={}MiB HWM={}MiB", proc_field("/proc/self/status", "VmRSS") / 1024,
        proc_field("/proc/self/status", "VmHWM") / 1024)
}
fn io() -> String {
    format!("proc_write_bytes={:.0}MiB proc_read_bytes={:.0}MiB",
        proc_field("/proc/self/io", "write_bytes") as f64 / 1048576.0,
        proc_field("/proc/self/io", "read_bytes") as f64 / 1048576.0)
}

enum Store { R(redb::Database), F(fjall::Keyspace, fjall::PartitionHandle, fjall::PartitionHandle) }

fn open(kind: &str, dir: &str) -> Store {
    match kind {
        "redb" => {
            std::fs::create_dir_all(dir).unwrap();
            let mut b = redb::Builder::new();
            b.set_cache_size(CACHE);
            b.set_repair_callback(|s| { let p = s.progress(); if (p * 100.0) as u64 % 10 == 0 { eprintln!("redb repair progress {:.2}", p); } });
            let db = b.create(format!("{dir}/catalog.redb")).unwrap();
            Store::R(db)
        }
        "fjall" => {
            let ks = fjall::Config::new(dir).cache_size(CACHE as u64).open().unwrap();
            let r = ks.open_partition("records", fjall::PartitionCreateOptions::default()).unwrap();
            let h = ks.open_partition("type_history", fjall::PartitionCreateOptions::default()).unwrap();
            Store::F(ks, r, h)
        }
        _ => panic!("store"),
    }
}

// mode: "a" (every group durable), "a-data" (fjall SyncData), "b" (durable every 1s)
fn write(st: &Store, start: u64, n: u64, mode: &str, quick: bool, report_every: u64) {
    let mut ctr = counters(start);
    let mut rng = Rng(start ^ 0xfeed);
    let t0 = Instant::now();
    let mut last_durable = Instant::now();
    let mut groups = 0u64; let mut durable = 0u64;
    let mut i = start;
    let end = start.saturating_add(n);
    let mut next_report = start + report_every;
    while i < end {
        let g_end = (i + GROUP).min(end);
        let make_durable = mode != "b" || last_durable.elapsed() >= Duration::from_secs(1) || g_end == end;
        match st {
            Store::R(db) => {
                let mut tx = db.begin_write().unwrap();
                tx.set_durability(if make_durable { redb::Durability::Immediate } else { redb::Durability::None }).unwrap();
                if make_durable && quick { tx.set_quick_repair(true); }
                {
                    let mut rt = tx.open_table(REC).unwrap();
                    let mut ht = tx.open_table(HIST).unwrap();
                    for j in i..g_end {
                        let t = type_of(j);
                        rt.insert(rec_key(j).as_slice(), value(&mut rng).as_slice()).unwrap();
                        ht.insert(hist_key(t, ctr[t]).as_slice(), hist_val(j).as_slice()).unwrap();
                        ctr[t] += 1;
                    }
                }
                tx.commit().unwrap();
            }
            Store::F(ks, r, h) => {
                let mut b = ks.batch();
                for j in i..g_end {
                    let t = type_of(j);
                    b.insert(r, rec_key(j), value(&mut rng));
                    b.insert(h, hist_key(t, ctr[t]), hist_val(j));
                    ctr[t] += 1;
                }
                match mode {
                    "a" => { b = b.durability(Some(fjall::PersistMode::SyncAll)); b.commit().unwrap(); }
                    "a-data" => { b = b.durability(Some(fjall::PersistMode::SyncData)); b.commit().unwrap(); }
                    _ => { b.commit().unwrap(); if make_durable { ks.persist(fjall::PersistMode::SyncAll).unwrap(); } }
                }
            }
        }
        if make_durable { last_durable = Instant::now(); durable += 1; }
        groups += 1;
        i = g_end;
        if i >= next_report {
            let s = t0.elapsed().as_secs_f64();
            println!("progress records={} elapsed={:.1}s rec/s={:.0} {}", i, s, (i - start) as f64 / s, mem());
            next_report += report_every;
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!("WRITE mode={mode} quick_repair={quick} records={} groups={groups} durable_commits={durable} secs={:.2} groups/s={:.1} records/s={:.0} {} {}",
        end - start, s, groups as f64 / s, (end - start) as f64 / s, mem(), io());
}

fn pct(v: &mut Vec<u32>, p: f64) -> f64 { let i = ((v.len() as f64 - 1.0) * p) as usize; v[i] as f64 / 1000.0 }

fn lookups(st: &Store, n_keys: u64, total: u64, threads: u64) {
    let per = total / threads;
    let t0 = Instant::now();
    let mut lats: Vec<u32> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|th| s.spawn(move || {
            let mut rng = Rng(0x1234 + th * 7919 + n_keys);
            let mut l = Vec::with_capacity(per as usize);
            match st {
                Store::R(db) => {
                    let rtx = db.begin_read().unwrap();
                    let t = rtx.open_table(REC).unwrap();
                    for _ in 0..per {
                        let k = rec_key(rng.next() % n_keys);
                        let a = Instant::now();
                        let v = t.get(k.as_slice()).unwrap();
                        assert!(v.map(|g| g.value().len()).unwrap_or(0) == 150, "missing key");
                        l.push(a.elapsed().as_nanos() as u32);
                    }
                }
                Store::F(_, r, _) => {
                    for _ in 0..per {
                        let k = rec_key(rng.next() % n_keys);
                        let a = Instant::now();
                        let v = r.get(&k).unwrap();
                        assert!(v.map(|g| g.len()).unwrap_or(0) == 150, "missing key");
                        l.push(a.elapsed().as_nanos() as u32);
                    }
                }
            }
            l
        })).collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let s = t0.elapsed().as_secs_f64();
    lats.sort_unstable();
    println!("LOOKUP threads={threads} n={} secs={:.2} lookups/s={:.0} p50={:.1}us p99={:.1}us max={:.1}us {}",
        lats.len(), s, lats.len() as f64 / s, pct(&mut lats, 0.5), pct(&mut lats, 0.99), pct(&mut lats, 1.0), mem());
}

fn scans(st: &Store, n_keys: u64, iters: u64) {
    let ctr = counters(n_keys);
    let mut rng = Rng(0x777);
    let mut lats = Vec::with_capacity(iters as usize);
    let mut got_total = 0u64;
    let t0 = Instant::now();
    let rtx = if let Store::R(db) = st { Some(db.begin_read().unwrap()) } else { None };
    let rt = rtx.as_ref().map(|x| x.open_table(HIST).unwrap());
    for _ in 0..iters {
        let t = (rng.next() % 8) as usize;
        let leaf = rng.next() % ctr[t];
        let lo = hist_key(t, 0); let hi = hist_key(t, leaf);
        let a = Instant::now();
        let mut got = 0u64;
        match st {
            Store::R(_) => { for e in rt.as_ref().unwrap().range(lo.as_slice()..hi.as_slice()).unwrap().rev().take(100) { let (_k, v) = e.unwrap(); got += v.value().len() as u64 / 44; } }
            Store::F(_, _, h) => { for e in h.range(lo..hi).rev().take(100) { let (_k, v) = e.unwrap(); got += v.len() as u64 / 44; } }
        }
        lats.push(a.elapsed().as_nanos() as u32);
        got_total += got;
    }
    let s = t0.elapsed().as_secs_f64();
    lats.sort_unstable();
    println!("SCAN iters={iters} avg_entries={:.1} secs={:.2} per_scan_avg={:.1}us p50={:.1}us p99={:.1}us {}",
        got_total as f64 / iters as f64, s, s * 1e6 / iters as f64, pct(&mut lats, 0.5), pct(&mut lats, 0.99), mem());
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (cmd, kind, dir) = (a[1].as_str(), a[2].as_str(), a[3].as_str());
    let num = |i: usize| a.get(i).map(|s| s.parse::<u64>().unwrap()).unwrap_or(0);
    let quick = a.iter().any(|s| s == "--quick-repair");
    let t0 = Instant::now();
    let st = open(kind, dir);
    let open_s = t0.elapsed().as_secs_f64();
    println!("OPEN {kind} secs={:.3} {}", open_s, mem());
    match cmd {
        // load <kind> <dir> <start> <n> <mode>
        "load" => { write(&st, num(4), num(5), a[6].as_str(), quick, 1_000_000); }
        // crashwrite <kind> <dir> <start>: write forever in mode b until killed
        "crashwrite" => { write(&st, num(4), u64::MAX - num(4), "b", quick, 100_000); }
        // open <kind> <dir> <n_keys>: open + one lookup
        "open" => {
            let t1 = Instant::now();
            let k = rec_key(num(4) / 2);
            let found = match &st {
                Store::R(db) => db.begin_read().unwrap().open_table(REC).unwrap().get(k.as_slice()).unwrap().is_some(),
                Store::F(_, r, _) => r.get(&k).unwrap().is_some(),
            };
            println!("OPEN+LOOKUP open_secs={:.3} lookup_secs={:.4} total_secs={:.3} found={found} {}", open_s, t1.elapsed().as_secs_f64(), t0.elapsed().as_secs_f64(), mem());
        }
        // read <kind> <dir> <n_keys>
        "read" => {
            lookups(&st, num(4), 1_000_000, 1);
            lookups(&st, num(4), 1_000_000, 2);
            scans(&st, num(4), 10_000);
        }
        _ => panic!("cmd"),
    }
    let tc = Instant::now();
    if let Store::F(ks, _, _) = &st { ks.persist(fjall::PersistMode::SyncAll).unwrap(); }
    drop(st);
    println!("CLOSE secs={:.3} {} {}", tc.elapsed().as_secs_f64(), mem(), io());
}
