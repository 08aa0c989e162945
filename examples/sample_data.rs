//! Realistic, deterministic sample data for the quickstart, the benchmark and
//! manual testing: an application's SQLite database, or a tree of files.
//!
//! ```text
//! cargo run --release --example sample_data -- sqlite app.db --size 1GB
//! cargo run --release --example sample_data -- files tree/ --size 300MB
//! ```
//!
//! Why it looks the way it does: backup speed and deduplication depend on what
//! the bytes are like, so the data mixes what real systems hold — compressible
//! text and JSON, incompressible media, many small files and a few large ones,
//! exact and shifted duplicates — instead of zeros or pure noise. The same
//! seed and size give the same bytes (for the same bundled SQLite), so two runs
//! of the benchmark measure the same input.
//!
//! Sizes are decimal (`1GB` = 10^9 bytes); `KiB`/`MiB`/`GiB` are binary.

use std::fmt::Write as _;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rusqlite::{params, Connection};

#[derive(Parser)]
#[command(about = "Generate realistic, deterministic sample data for holdfast")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// An application database: customers, orders and events, with indexes.
    Sqlite {
        /// The database file to create.
        path: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Journal mode left in the file header; live applications use WAL.
        #[arg(long, value_enum, default_value = "wal")]
        journal: Journal,
    },
    /// A tree of logs, documents, exports, media and duplicates.
    Files {
        /// The directory to fill (created; must be empty unless --force).
        dir: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Approximate size to generate, e.g. 20MB, 1GB, 512MiB.
    #[arg(long, value_parser = parse_size, default_value = "100MB")]
    size: u64,
    /// Seed of the generator: the same seed and size give the same data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Replace an existing database, or write into a non-empty directory.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Journal {
    Wal,
    Delete,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let bytes = match args.what {
        What::Sqlite {
            path,
            common,
            journal,
        } => sqlite(&path, &common, journal)?,
        What::Files { dir, common } => files(&dir, &common)?,
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sample_data: {:.1} MB in {secs:.1} s ({:.0} MB/s)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a size such as 20MB, 1GB or 512MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    Ok((num * mult) as u64)
}

// ---------------------------------------------------------------------------
// A small, fast, seeded PRNG (wyrand). Not cryptographic, which is the point:
// reproducible bytes at memory speed, without a dependency.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Skewed towards small values, as sizes and popularity are in practice.
    fn skewed(&mut self, lo: u64, hi: u64) -> u64 {
        let span = hi - lo + 1;
        let bound = self.below(span) + 1;
        lo + self.below(bound)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    fn hex(&mut self, out: &mut String, digits: usize) {
        let mut left = digits;
        while left > 0 {
            let n = left.min(16);
            let v = self.next_u64();
            let _ = write!(out, "{:016x}", v);
            out.truncate(out.len() - (16 - n));
            left -= n;
        }
    }
}

// ---------------------------------------------------------------------------
// Vocabulary.

const FIRST: &[&str] = &[
    "Ada", "Amara", "Ana", "Aiko", "Ben", "Bruno", "Chen", "Chloe", "Dario", "Divya", "Elena",
    "Emeka", "Fatima", "Finn", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jonas", "Kai", "Kofi",
    "Lars", "Leila", "Liam", "Lucia", "Maya", "Mateo", "Nadia", "Noah", "Olga", "Omar", "Priya",
    "Quinn", "Rosa", "Sami", "Sofia", "Tariq", "Uma", "Viktor", "Wen", "Yara", "Zoe",
];
const LAST: &[&str] = &[
    "Adeyemi",
    "Andersen",
    "Bauer",
    "Costa",
    "Dubois",
    "Eriksson",
    "Fernandes",
    "Garcia",
    "Hansen",
    "Ibrahim",
    "Ito",
    "Jansen",
    "Kowalski",
    "Kumar",
    "Larsen",
    "Lopez",
    "Martin",
    "Moreau",
    "Nakamura",
    "Nguyen",
    "Novak",
    "Okafor",
    "Olsen",
    "Petrov",
    "Quist",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Tanaka",
    "Umar",
    "Varga",
    "Wagner",
    "Wang",
    "Xu",
    "Yilmaz",
    "Zhang",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "mail.example.net",
    "corp.example",
    "post.example.co.uk",
    "inbox.example.de",
];
const STREETS: &[&str] = &[
    "Harbour Road",
    "Linden Allee",
    "Rue des Lilas",
    "Calle Mayor",
    "Mill Lane",
    "Kings Avenue",
    "Station Street",
    "Via Roma",
    "Birch Close",
    "Market Square",
    "Oak Terrace",
    "Canal Walk",
    "Bergstrasse",
    "Hill View",
    "Riverside Drive",
    "Church Row",
];
const CITIES: &[(&str, &str)] = &[
    ("Lisbon", "PT"),
    ("Lyon", "FR"),
    ("Leeds", "GB"),
    ("Leipzig", "DE"),
    ("Bologna", "IT"),
    ("Valencia", "ES"),
    ("Gdansk", "PL"),
    ("Aarhus", "DK"),
    ("Utrecht", "NL"),
    ("Brno", "CZ"),
    ("Osaka", "JP"),
    ("Lagos", "NG"),
    ("Pune", "IN"),
    ("Austin", "US"),
    ("Toronto", "CA"),
    ("Porto Alegre", "BR"),
    ("Melbourne", "AU"),
    ("Izmir", "TR"),
    ("Tampere", "FI"),
    ("Cork", "IE"),
];
const WORDS: &[&str] = &[
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "ex",
    "ea",
    "commodo",
    "consequat",
    "duis",
    "aute",
    "irure",
    "in",
    "reprehenderit",
    "voluptate",
    "velit",
    "esse",
    "cillum",
    "fugiat",
    "nulla",
    "pariatur",
    "excepteur",
    "sint",
    "occaecat",
    "cupidatat",
    "non",
    "proident",
    "sunt",
    "culpa",
    "qui",
    "officia",
    "deserunt",
    "mollit",
    "anim",
    "id",
    "est",
    "laborum",
    "delivery",
    "invoice",
    "refund",
    "customer",
    "warehouse",
    "shipment",
    "account",
    "payment",
    "the",
    "a",
    "of",
];
const PRODUCTS: &[&str] = &[
    "Walnut desk lamp",
    "Ceramic mug",
    "Linen shirt",
    "Trail running shoes",
    "Espresso grinder",
    "Wool blanket",
    "Notebook A5 dotted",
    "USB-C cable 2m",
    "Cast iron pan",
    "Yoga mat",
    "Bamboo cutting board",
    "Noise cancelling headphones",
    "Rain jacket",
    "Chef knife 21cm",
    "Houseplant pot",
    "Mechanical keyboard",
    "Water bottle 750ml",
    "Desk chair cushion",
    "Tea sampler",
    "Bike light set",
    "Leather wallet",
    "Board game",
    "Scented candle",
    "Phone stand",
];
const ORDER_STATUS: &[&str] = &[
    "delivered",
    "delivered",
    "delivered",
    "delivered",
    "shipped",
    "shipped",
    "paid",
    "pending",
    "cancelled",
    "refunded",
];
const CURRENCIES: &[&str] = &["EUR", "EUR", "EUR", "USD", "USD", "GBP", "JPY", "BRL"];
const EVENT_KINDS: &[&str] = &[
    "page_view",
    "page_view",
    "page_view",
    "page_view",
    "search",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout_started",
    "payment_succeeded",
    "payment_failed",
    "login",
    "logout",
    "password_reset",
    "email_opened",
    "api_call",
];
const PATHS: &[&str] = &[
    "/",
    "/products",
    "/products/search",
    "/cart",
    "/checkout",
    "/account",
    "/account/orders",
    "/help",
    "/api/v1/orders",
    "/api/v1/customers",
    "/api/v1/events",
    "/login",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "okhttp/4.12.0",
    "python-requests/2.31.0",
    "curl/8.5.0",
];
const SERVICES: &[&str] = &["api", "worker", "web", "billing", "search", "mailer"];
const LEVELS: &[&str] = &[
    "INFO", "INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR",
];

/// 2023-01-01T00:00:00Z: the generated history starts here.
const EPOCH: i64 = 1_672_531_200;

fn sentence(rng: &mut Rng, out: &mut String, min: u64, max: u64) {
    let n = rng.range(min, max);
    for i in 0..n {
        let w = rng.pick(WORDS);
        if i == 0 {
            let mut cs = w.chars();
            if let Some(c) = cs.next() {
                out.push(c.to_ascii_uppercase());
                out.push_str(cs.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(w);
        }
    }
    out.push('.');
}

fn iso(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

// ---------------------------------------------------------------------------
// SQLite

const SCHEMA: &str = "
CREATE TABLE customers (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    email         TEXT NOT NULL,
    phone         TEXT,
    address       TEXT NOT NULL,
    city          TEXT NOT NULL,
    country       TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    balance_cents INTEGER NOT NULL,
    notes         TEXT
);
CREATE UNIQUE INDEX customers_email ON customers(email);
CREATE TABLE orders (
    id               INTEGER PRIMARY KEY,
    customer_id      INTEGER NOT NULL REFERENCES customers(id),
    created_at       INTEGER NOT NULL,
    status           TEXT NOT NULL,
    currency         TEXT NOT NULL,
    total_cents      INTEGER NOT NULL,
    items            TEXT NOT NULL,
    shipping_address TEXT NOT NULL,
    payment_token    BLOB NOT NULL
);
CREATE INDEX orders_customer ON orders(customer_id, created_at);
CREATE INDEX orders_status ON orders(status);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    customer_id INTEGER,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    message     TEXT
);
CREATE INDEX events_ts ON events(ts);
CREATE INDEX events_kind_ts ON events(kind, ts);
";

fn sqlite(path: &Path, common: &Common, journal: Journal) -> Result<u64> {
    if path.exists() && !common.force {
        bail!("{} exists; pass --force to replace it", path.display());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("unable to create directory {}", parent.display()))?;
    }
    // Built beside the target and renamed into place, so an interrupted run
    // never leaves a half-filled database where a script expects a whole one.
    let partial = path.with_extension("partial");
    for p in [&partial, &path.with_extension("partial-journal")] {
        if p.exists() {
            fs::remove_file(p).with_context(|| format!("unable to remove {}", p.display()))?;
        }
    }
    let conn = Connection::open(&partial)
        .with_context(|| format!("unable to create {}", partial.display()))?;
    // Bulk-load settings: no journal, no fsync, a cache big enough that random
    // index inserts stay in memory. Safe because the file is not yet in place.
    conn.execute_batch(
        "PRAGMA page_size = 4096;
         PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -262144;",
    )?;
    conn.execute_batch(SCHEMA)?;

    let target = common.size;
    let mut rng = Rng::new(common.seed);
    let (mut customers, mut orders, mut events) = (0u64, 0u64, 0u64);
    let mut now = EPOCH;
    let mut reported = 0u64;
    let progress = std::io::stderr().is_terminal();
    let mut text = String::with_capacity(4096);
    let mut text2 = String::with_capacity(1024);
    let mut token = [0u8; 32];

    loop {
        let tx = conn.unchecked_transaction()?;
        {
            let mut ins_customer = tx.prepare_cached(
                "INSERT INTO customers (id, name, email, phone, address, city, country, created_at, balance_cents, notes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut ins_order = tx.prepare_cached(
                "INSERT INTO orders (id, customer_id, created_at, status, currency, total_cents, items, shipping_address, payment_token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut ins_event = tx.prepare_cached(
                "INSERT INTO events (id, ts, customer_id, kind, payload, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            // A few MB of rows per transaction, in the proportions of a shop:
            // few customers, more orders, many events.
            for _ in 0..20 {
                for _ in 0..20 {
                    customers += 1;
                    now += rng.below(40) as i64;
                    let first = rng.pick(FIRST);
                    let last = rng.pick(LAST);
                    let (city, country) = rng.pick(CITIES);
                    let name = format!("{first} {last}");
                    let email = format!(
                        "{}.{}{}@{}",
                        first.to_ascii_lowercase(),
                        last.to_ascii_lowercase(),
                        customers,
                        rng.pick(DOMAINS)
                    );
                    let phone = rng.chance(80).then(|| {
                        format!(
                            "+{} {:03} {:07}",
                            rng.range(1, 99),
                            rng.below(1000),
                            rng.below(10_000_000)
                        )
                    });
                    let address = format!(
                        "{} {}, {:05} {city}",
                        rng.range(1, 240),
                        rng.pick(STREETS),
                        rng.below(100_000)
                    );
                    text.clear();
                    let notes = if rng.chance(40) {
                        sentence(&mut rng, &mut text, 8, 40);
                        Some(text.as_str())
                    } else {
                        None
                    };
                    ins_customer.execute(params![
                        customers,
                        name,
                        email,
                        phone,
                        address,
                        city,
                        country,
                        iso(now),
                        rng.skewed(0, 500_000) as i64 - 20_000,
                        notes,
                    ])?;
                }
                for _ in 0..60 {
                    orders += 1;
                    now += rng.below(15) as i64;
                    let customer = 1 + rng.skewed(0, customers - 1);
                    text.clear();
                    text.push('[');
                    let mut total = 0u64;
                    for i in 0..rng.range(1, 5) {
                        let qty = rng.skewed(1, 6);
                        let cents = rng.range(199, 24_999);
                        total += qty * cents;
                        if i > 0 {
                            text.push(',');
                        }
                        let _ = write!(
                            text,
                            r#"{{"sku":"SKU-{:06}","name":"{}","qty":{qty},"unit_cents":{cents}}}"#,
                            rng.below(40_000),
                            rng.pick(PRODUCTS)
                        );
                    }
                    text.push(']');
                    let (city, _) = rng.pick(CITIES);
                    let ship = format!(
                        "{} {}, {:05} {city}",
                        rng.range(1, 240),
                        rng.pick(STREETS),
                        rng.below(100_000)
                    );
                    rng.fill(&mut token);
                    ins_order.execute(params![
                        orders,
                        customer,
                        now,
                        rng.pick(ORDER_STATUS),
                        rng.pick(CURRENCIES),
                        total,
                        text,
                        ship,
                        &token[..],
                    ])?;
                }
                for _ in 0..300 {
                    events += 1;
                    now += rng.below(3) as i64;
                    let customer = rng.chance(85).then(|| 1 + rng.skewed(0, customers - 1));
                    let kind = rng.pick(EVENT_KINDS);
                    text.clear();
                    text.push_str(r#"{"session":""#);
                    rng.hex(&mut text, 16);
                    let _ = write!(
                        text,
                        r#"","ip":"203.0.{}.{}","ua":"{}","path":"{}","status":{},"ms":{}"#,
                        rng.below(256),
                        rng.below(256),
                        rng.pick(AGENTS),
                        rng.pick(PATHS),
                        if rng.chance(95) {
                            200
                        } else {
                            *rng.pick(&[301u16, 404, 429, 500])
                        },
                        rng.skewed(1, 2_000),
                    );
                    if rng.chance(30) {
                        text.push_str(r#","query":""#);
                        sentence(&mut rng, &mut text, 1, 4);
                        text.push('"');
                    }
                    text.push('}');
                    text2.clear();
                    let message = if rng.chance(60) {
                        sentence(&mut rng, &mut text2, 4, 18);
                        Some(text2.as_str())
                    } else {
                        None
                    };
                    ins_event.execute(params![events, now, customer, kind, text, message])?;
                }
            }
        }
        tx.commit()?;
        let size: u64 = conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?;
        if progress && size * 10 / target.max(1) > reported {
            reported = size * 10 / target.max(1);
            eprint!(
                "\rsample_data: {:>5.1}% of {}",
                (size as f64 * 100.0 / target as f64).min(100.0),
                path.display()
            );
        }
        if size >= target {
            break;
        }
    }
    if progress {
        eprintln!();
    }
    conn.execute_batch("PRAGMA analysis_limit = 1000; ANALYZE;")?;
    let mode = match journal {
        Journal::Wal => "WAL",
        Journal::Delete => "DELETE",
    };
    let set: String = conn.query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| r.get(0))?;
    if !set.eq_ignore_ascii_case(mode) {
        bail!(
            "unable to set journal_mode {mode} on {}: SQLite answered {set}",
            partial.display()
        );
    }
    conn.close().map_err(|(_, e)| e)?;
    fs::rename(&partial, path)
        .with_context(|| format!("unable to move {} to {}", partial.display(), path.display()))?;
    let bytes = fs::metadata(path)?.len();
    println!(
        "{}: {customers} customers, {orders} orders, {events} events, {:.1} MB",
        path.display(),
        bytes as f64 / 1e6
    );
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// Files

#[derive(Clone, Copy, Debug)]
enum Kind {
    Log,
    Doc,
    Export,
    Media,
    Duplicate,
    Shifted,
}

/// Share of the bytes each kind of file gets, in percent.
const MIX: &[(Kind, u64)] = &[
    (Kind::Log, 35),
    (Kind::Doc, 8),
    (Kind::Export, 17),
    (Kind::Media, 28),
    (Kind::Duplicate, 8),
    (Kind::Shifted, 4),
];

struct Tree<'a> {
    root: &'a Path,
    rng: Rng,
    written: u64,
    files: u64,
    /// Files that duplicates may copy: path relative to root, and size.
    originals: Vec<(PathBuf, u64)>,
    by_kind: [u64; 6],
    buf: Vec<u8>,
}

fn files(dir: &Path, common: &Common) -> Result<u64> {
    if dir.exists() {
        let non_empty = fs::read_dir(dir)
            .with_context(|| format!("unable to read {}", dir.display()))?
            .next()
            .is_some();
        if non_empty && !common.force {
            bail!(
                "{} is not empty; pass --force to write into it",
                dir.display()
            );
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("unable to create {}", dir.display()))?;
    let mut t = Tree {
        root: dir,
        rng: Rng::new(common.seed),
        written: 0,
        files: 0,
        originals: Vec::new(),
        by_kind: [0; 6],
        buf: Vec::with_capacity(1 << 20),
    };
    let target = common.size;
    let mut reported = 0;
    let progress = std::io::stderr().is_terminal();
    // A few empty files, as real trees have them.
    for name in ["projects/.keep", "logs/.keep", "tmp/lockfile"] {
        t.write(Path::new(name), &[])?;
    }
    while t.written < target {
        let left = target - t.written;
        // Whichever kind is furthest below its share of the bytes so far goes
        // next: shares hold at any size, and small files come in their
        // thousands while media comes in tens.
        let mut kind = Kind::Doc;
        let mut behind = i128::MIN;
        for &(k, share) in MIX {
            let gap = i128::from(t.written + 1) * i128::from(share) / 100
                - i128::from(t.by_kind[k as usize]);
            if gap > behind {
                behind = gap;
                kind = k;
            }
        }
        if matches!(kind, Kind::Duplicate | Kind::Shifted) && t.originals.is_empty() {
            kind = Kind::Doc;
        }
        let n = t.file(kind, left)?;
        t.by_kind[kind as usize] += n;
        if progress && t.written * 10 / target.max(1) > reported {
            reported = t.written * 10 / target.max(1);
            eprint!(
                "\rsample_data: {:>5.1}% of {}",
                (t.written as f64 * 100.0 / target as f64).min(100.0),
                dir.display()
            );
        }
    }
    if progress {
        eprintln!();
    }
    // Fixed modification times, so the tree is the same on every run.
    for entry in walkdir::WalkDir::new(dir).contents_first(true) {
        let entry = entry?;
        let at = filetime::FileTime::from_unix_time(EPOCH + t.rng.below(365 * 86_400) as i64, 0);
        filetime::set_file_mtime(entry.path(), at)
            .with_context(|| format!("unable to set mtime of {}", entry.path().display()))?;
    }
    let summary: Vec<String> = MIX
        .iter()
        .map(|&(k, _)| format!("{k:?} {:.1} MB", t.by_kind[k as usize] as f64 / 1e6).to_lowercase())
        .collect();
    println!(
        "{}: {} files, {:.1} MB ({})",
        dir.display(),
        t.files,
        t.written as f64 / 1e6,
        summary.join(", ")
    );
    Ok(t.written)
}

impl Tree<'_> {
    fn write(&mut self, rel: &Path, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("unable to create {}", parent.display()))?;
        }
        fs::write(&path, bytes).with_context(|| format!("unable to write {}", path.display()))?;
        self.written += bytes.len() as u64;
        self.files += 1;
        Ok(())
    }

    /// Writes one file of `kind`, at most `left` bytes; returns its size.
    fn file(&mut self, kind: Kind, left: u64) -> Result<u64> {
        let rng = &mut self.rng;
        let n = self.files;
        let (rel, size) = match kind {
            Kind::Log => {
                let svc = rng.pick(SERVICES);
                let day = rng.below(365) as i64;
                let date =
                    chrono::DateTime::from_timestamp(EPOCH + day * 86_400, 0).unwrap_or_default();
                let rot = if rng.chance(30) {
                    format!(".{}", rng.range(1, 9))
                } else {
                    String::new()
                };
                let rel = PathBuf::from(format!(
                    "logs/{svc}/{}/{svc}-{}-{n}.log{rot}",
                    date.format("%Y/%m"),
                    date.format("%Y-%m-%d")
                ));
                (rel, rng.skewed(4 << 10, 4 << 20))
            }
            Kind::Doc => {
                let ext = rng.pick(&["md", "txt", "rs", "py", "yaml", "html"]);
                let rel = PathBuf::from(format!(
                    "projects/{}/{}/{}-{n}.{ext}",
                    rng.pick(&["atlas", "beacon", "cobalt", "delta", "ember"]),
                    rng.pick(&[
                        "docs",
                        "src",
                        "src/core",
                        "src/util",
                        "config",
                        "notes/2024"
                    ]),
                    rng.pick(WORDS)
                ));
                (rel, rng.skewed(200, 96 << 10))
            }
            Kind::Export => {
                let ext = if rng.chance(60) { "csv" } else { "jsonl" };
                let rel = PathBuf::from(format!(
                    "exports/2024-{:02}/{}-{n}.{ext}",
                    rng.range(1, 12),
                    rng.pick(&["orders", "customers", "payouts", "inventory"])
                ));
                (rel, rng.skewed(64 << 10, 12 << 20))
            }
            Kind::Media => {
                let video = rng.chance(4);
                let rel = if video {
                    PathBuf::from(format!("media/video/clip-{n:05}.mp4"))
                } else {
                    PathBuf::from(format!(
                        "media/photos/{}/IMG_{n:05}.jpg",
                        rng.pick(&[
                            "2023-summer",
                            "2023-winter",
                            "2024-spring",
                            "team-offsite",
                            "products"
                        ])
                    ))
                };
                let size = if video {
                    rng.range(8 << 20, 40 << 20)
                } else {
                    rng.skewed(60 << 10, 6 << 20)
                };
                (rel, size)
            }
            Kind::Duplicate | Kind::Shifted => {
                let i = rng.below(self.originals.len() as u64) as usize;
                let (orig, size) = self.originals[i].clone();
                let name = orig
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let rel = if matches!(kind, Kind::Duplicate) {
                    PathBuf::from(format!("shared/copies-{}/{name}", rng.below(8)))
                } else {
                    PathBuf::from(format!("archive/edited/{n}-{name}"))
                };
                if size > left {
                    return self.file(Kind::Doc, left);
                }
                let mut bytes = fs::read(self.root.join(&orig))
                    .with_context(|| format!("unable to read {}", orig.display()))?;
                if matches!(kind, Kind::Shifted) {
                    // An edit near the start shifts every later byte: only
                    // content-defined chunking still finds the rest.
                    let at = rng.below(bytes.len().min(4096) as u64 + 1) as usize;
                    let mut insert = String::from("edited: ");
                    sentence(rng, &mut insert, 3, 12);
                    insert.push('\n');
                    bytes.splice(at..at, insert.into_bytes());
                }
                self.write(&rel, &bytes)?;
                return Ok(bytes.len() as u64);
            }
        };
        let size = size.min(left).max(1);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        match kind {
            Kind::Log => log_text(&mut self.rng, &mut buf, size),
            Kind::Doc => doc_text(&mut self.rng, &mut buf, size),
            Kind::Export => {
                let json = rel.extension().is_some_and(|e| e == "jsonl");
                export_text(&mut self.rng, &mut buf, size, json)
            }
            _ => {
                // JPEG/MP4-like: a recognisable header, then incompressible bytes.
                let header: &[u8] = if rel.extension().is_some_and(|e| e == "mp4") {
                    b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
                } else {
                    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
                };
                buf.extend_from_slice(&header[..header.len().min(size as usize)]);
                let start = buf.len();
                buf.resize(size as usize, 0);
                self.rng.fill(&mut buf[start..]);
            }
        }
        buf.truncate(size as usize);
        self.write(&rel, &buf)?;
        if !matches!(kind, Kind::Media) || self.rng.chance(30) {
            self.originals.push((rel, size));
        }
        self.buf = buf;
        Ok(size)
    }
}

fn push_line(buf: &mut Vec<u8>, line: &mut String) {
    line.push('\n');
    buf.extend_from_slice(line.as_bytes());
    line.clear();
}

fn log_text(rng: &mut Rng, buf: &mut Vec<u8>, size: u64) {
    let mut ts = EPOCH * 1000 + rng.below(365 * 86_400_000) as i64;
    let svc = rng.pick(SERVICES);
    let mut line = String::with_capacity(256);
    while (buf.len() as u64) < size {
        ts += rng.skewed(1, 4_000) as i64;
        let at = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default();
        let level = rng.pick(LEVELS);
        let _ = write!(
            line,
            "{} {level:<5} {svc} request_id=",
            at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        );
        rng.hex(&mut line, 12);
        let _ = write!(
            line,
            " method={} path={} status={} duration_ms={} customer={}",
            rng.pick(&["GET", "GET", "GET", "POST", "PUT", "DELETE"]),
            rng.pick(PATHS),
            if *level == "ERROR" { 500 } else { 200 },
            rng.skewed(1, 3_000),
            rng.skewed(1, 200_000)
        );
        if *level != "INFO" {
            line.push_str(" msg=\"");
            sentence(rng, &mut line, 3, 12);
            line.push('"');
        }
        push_line(buf, &mut line);
    }
}

fn doc_text(rng: &mut Rng, buf: &mut Vec<u8>, size: u64) {
    let mut line = String::with_capacity(512);
    let _ = write!(line, "# {}", rng.pick(PRODUCTS));
    push_line(buf, &mut line);
    while (buf.len() as u64) < size {
        if rng.chance(15) {
            line.push_str("\n## ");
            sentence(rng, &mut line, 2, 5);
        } else {
            for _ in 0..rng.range(2, 6) {
                sentence(rng, &mut line, 5, 20);
                line.push(' ');
            }
        }
        push_line(buf, &mut line);
    }
}

fn export_text(rng: &mut Rng, buf: &mut Vec<u8>, size: u64, json: bool) {
    let mut line = String::with_capacity(256);
    if !json {
        line.push_str("order_id,customer_email,created_at,status,currency,total_cents,sku,qty");
        push_line(buf, &mut line);
    }
    let mut id = rng.below(1_000_000);
    let mut ts = EPOCH + rng.below(365 * 86_400) as i64;
    while (buf.len() as u64) < size {
        id += 1;
        ts += rng.below(120) as i64;
        let email = format!(
            "{}.{}{}@{}",
            rng.pick(FIRST).to_ascii_lowercase(),
            rng.pick(LAST).to_ascii_lowercase(),
            rng.below(500_000),
            rng.pick(DOMAINS)
        );
        let (at, status, currency) = (iso(ts), rng.pick(ORDER_STATUS), rng.pick(CURRENCIES));
        let (total, sku, qty) = (rng.range(199, 99_999), rng.below(40_000), rng.skewed(1, 6));
        let _ = if json {
            write!(
                line,
                r#"{{"order_id":{id},"customer_email":"{email}","created_at":"{at}","status":"{status}","currency":"{currency}","total_cents":{total},"sku":"SKU-{sku:06}","qty":{qty}}}"#
            )
        } else {
            write!(
                line,
                "{id},{email},{at},{status},{currency},{total},SKU-{sku:06},{qty}"
            )
        };
        push_line(buf, &mut line);
    }
}
