//! `p2m-fuzz`: reproduce, format, hunt, minimize and benchmark p2m/IOMMU scenarios.

use clap::{Parser, Subcommand};
use harness::exhaustive;
use harness::generate::Swarm;
use harness::minimize::minimize_with;
use harness::scenario::trace::parse_config_words;
use harness::scenario::{encode, parse_trace, to_trace, Scenario};
use harness::{revision_by_name, run, run_with, RunStats};
use p2m_core::{Mode, Revision};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "p2m-fuzz",
    about = "Differential fuzzing of Xen's p2m/IOMMU sync"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options of `p2m-fuzz hunt`.
#[derive(clap::Args)]
struct HuntArgs {
    /// p2m mode (ept, npt, shadow); default: all.
    #[arg(long)]
    mode: Option<String>,
    /// A whole configuration, as a trace's config line without `config`
    /// (e.g. "mode=ept vendor=vtd share=off superpages=2m"); overrides --mode.
    #[arg(long)]
    config: Option<String>,
    /// Hardware semantics preset for every scenario (default: $P2M_HW, else conservative).
    #[arg(long)]
    hw: Option<String>,
    /// Revision to model.
    #[arg(long, default_value = "fixed")]
    revision: String,
    /// Time budget in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory for reproducers.
    #[arg(long, default_value = "hunt-out")]
    out: PathBuf,
    /// Assume this switch has its reference value (repeatable): look past a known hole.
    #[arg(long = "assume-fixed", value_name = "SWITCH")]
    assume_fixed: Vec<String>,
    /// Every class is fatal, leaked tables and cached under-permission included.
    #[arg(long)]
    strict: bool,
    /// Fuzz the raw API: `set_entry` ops (the internal API) mixed with the caller ops,
    /// every divergence counts. Without it (the default) scenarios are caller ops only
    /// and only a divergence reached by a caller chain counts (`reachable via …`).
    #[arg(long)]
    raw: bool,
    /// Raw API scenarios (implies --raw), passing over findings whose inputs no Xen
    /// caller produces (internal API only, outside security support, a configuration
    /// the line does not have; see `harness::reach`) and looking on.
    #[arg(long)]
    reachable: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay files (text traces or fuzz-input bytes); exit 1 on a divergence.
    Repro {
        /// Revision to model (default: $P2M_REVISION, else fixed).
        #[arg(long)]
        revision: Option<String>,
        /// Write a Graphviz picture of the tables and caches at the divergence (or of
        /// the final state when clean) to this file; needs exactly one input file.
        #[arg(long, value_name = "OUT.dot")]
        dot: Option<PathBuf>,
        /// Files to replay.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the decoded scenario as a text trace.
    Fmt {
        /// File to decode.
        file: PathBuf,
    },
    /// Random swarm search on stable Rust; writes a reproducer on divergence.
    Hunt(HuntArgs),
    /// Shrink a diverging file to a minimal op sequence (same divergence class).
    Minimize {
        /// Revision to model.
        #[arg(long)]
        revision: Option<String>,
        /// File to shrink (rewritten as a text trace unless --out is given).
        file: PathBuf,
        /// Output file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Every class is fatal (shrink a leaked table or cached under-permission too).
        #[arg(long)]
        strict: bool,
    },
    /// Name the root cause: which switch, set to its `fixed` value alone, removes the divergence.
    Blame {
        /// Revision to model (default: $P2M_REVISION, else fixed).
        #[arg(long)]
        revision: Option<String>,
        /// Files to blame.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Assume this switch has its reference value (repeatable).
        #[arg(long = "assume-fixed", value_name = "SWITCH")]
        assume_fixed: Vec<String>,
        /// Every class is fatal (blame leaked tables and cached under-permission too).
        #[arg(long)]
        strict: bool,
    },
    /// Write a file's scenario as fuzz-input bytes (a text trace becomes a seed corpus entry).
    Encode {
        /// Text trace or bytes to read.
        file: PathBuf,
        /// Where to write the bytes.
        out: PathBuf,
    },
    /// List revisions and their switch values.
    Revisions,
    /// Check every op sequence up to --depth over a small abstract domain (see
    /// `harness::exhaustive`); report the first shortest divergence.
    Exhaustive(ExhaustiveArgs),
    /// Measure ops/s for a 4 KiB-only and a mixed-order workload, the 1 GiB vs 4 KiB
    /// cost table; or, with --corpus, the cost of each input of a fuzz corpus.
    Bench {
        /// Seconds per workload.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Instead: time every input of this directory (fuzz-input bytes read as the
        /// targets read them, or text traces) and print the cost distribution.
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Revision the --corpus inputs are replayed under (default: $P2M_REVISION, else fixed).
        #[arg(long)]
        revision: Option<String>,
        /// Replays per --corpus input (the mean is reported).
        #[arg(long, default_value_t = 5)]
        reps: u32,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("p2m-fuzz: {msg}");
    ExitCode::from(2)
}

/// Loads a scenario from a text trace or fuzz-input bytes, with a one-line error.
fn load(path: &Path) -> Result<Scenario, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        return Err(format!(
            "{}: is a directory, expected a file",
            path.display()
        ));
    }
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.is_empty() {
        return Err(format!("{}: empty file", path.display()));
    }
    // A trace is UTF-8, starts like one and has a config line; fuzz inputs may start
    // with '#'.
    let looks_text = (data.starts_with(b"#") || data.starts_with(b"config"))
        && std::str::from_utf8(&data)
            .is_ok_and(|t| t.lines().any(|l| l.trim_start().starts_with("config ")));
    if looks_text {
        let text = std::str::from_utf8(&data)
            .map_err(|_| format!("{}: trace is not UTF-8", path.display()))?;
        return parse_trace(text).map_err(|e| format!("{}: {e}", path.display()));
    }
    let target = target_mode(path)?;
    // Fuzz inputs are read as the targets read them (`P2M_API`).
    harness::callers_api()?;
    harness::scenario::bytes::decode_for_api(&data, target).ok_or_else(|| {
        format!(
            "{}: truncated input ({} bytes; a scenario needs a 1-byte header and at least one 12-byte op)",
            path.display(),
            data.len()
        )
    })
}

/// The mode a per-mode fuzz target forces on bytes in `path`: `P2M_TARGET` if set
/// (`ept`, `npt`, `shadow`, or `mixed` for the header's own mode), else the name of the
/// directory holding the file when it is `ept`, `npt` or `shadow` (as in cargo fuzz's
/// `artifacts/<target>/` and `corpus/<target>/`), else none.
fn target_mode(path: &Path) -> Result<Option<Mode>, String> {
    let from_env = std::env::var("P2M_TARGET").ok().filter(|t| !t.is_empty());
    let name = match &from_env {
        Some(t) => t.clone(),
        None => path
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string(),
    };
    match name.as_str() {
        "ept" => Ok(Some(Mode::Ept)),
        "npt" => Ok(Some(Mode::Npt)),
        "shadow" => Ok(Some(Mode::Shadow)),
        _ if from_env.is_none() || name == "mixed" => Ok(None),
        _ => Err(format!(
            "P2M_TARGET={name}: unknown target (known: ept, npt, shadow, mixed)"
        )),
    }
}

fn pick_revision(name: Option<String>) -> Result<Revision, String> {
    match name {
        Some(n) => revision_by_name(&n),
        None => harness::revision_from_env(),
    }
}

/// `repro`: replays each file; with `--dot`, also writes the picture of the one file.
fn repro(revision: Option<String>, dot: Option<PathBuf>, files: Vec<PathBuf>) -> ExitCode {
    if dot.is_some() && files.len() != 1 {
        return fail(format!(
            "--dot needs exactly one input file (got {})",
            files.len()
        ));
    }
    let rev = match pick_revision(revision) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    // Check the input, then open the output, so that a bad path fails before any
    // replay output and a bad input leaves no empty picture behind.
    if let (Some(_), Some(f)) = (&dot, files.first()) {
        if let Err(e) = load(f) {
            return fail(e);
        }
    }
    let mut dot_out = match &dot {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Some((path, file)),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        None => None,
    };
    let mut any = false;
    for f in files {
        let s = match load(&f) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        println!("== {} (revision {})", f.display(), rev.name);
        print!("{}", to_trace(&s));
        let out = run(&s, rev);
        match out.divergence {
            Some(d) => {
                any = true;
                println!("{d}");
            }
            None => match out.crashed {
                Some(why) => println!(
                    "verdict: domain crashed after {} ops ({why}): Xen's own verdict, no divergence",
                    out.stats.ops
                ),
                None => println!("verdict: clean ({} ops)", out.stats.ops),
            },
        }
        for n in &out.notes {
            println!(
                "note ({}, non-fatal; --strict makes it fatal):\n{n}",
                n.finding.class
            );
        }
        if let Some((path, file)) = &mut dot_out {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| f.display().to_string());
            let text = harness::dot::scenario_dot(&s, rev, &name);
            if let Err(e) = file.write_all(text.as_bytes()).and_then(|()| file.flush()) {
                return fail(format!("{}: {e}", path.display()));
            }
            println!("dot: wrote {}", path.display());
        }
    }
    if any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn parse_mode(m: &str) -> Result<Mode, String> {
    Mode::from_name(m).ok_or_else(|| format!("unknown mode '{m}' (known: ept, npt, shadow)"))
}

fn write_reproducer(out: &Path, s: &Scenario, name: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let trace = out.join(format!("{name}.trace"));
    std::fs::write(&trace, to_trace(s)).map_err(|e| format!("{}: {e}", trace.display()))?;
    let bin = out.join(format!("{name}.bin"));
    std::fs::write(&bin, encode(s)).map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(trace)
}

fn hunt(args: HuntArgs) -> ExitCode {
    let rev = match revision_by_name(&args.revision)
        .and_then(|r| harness::assume_fixed(r, &args.assume_fixed))
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mode = match args.mode.as_deref().map(parse_mode).transpose() {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let config = match args.config.as_deref().map(parse_config_words).transpose() {
        Ok(c) => c.map(|(c, _)| c),
        Err(e) => return fail(format!("--config: {e}")),
    };
    let hw = match harness::hw_from(args.hw.as_deref()) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let start = Instant::now();
    let budget = Duration::from_secs(args.seconds);
    let mut last = Instant::now();
    let mut total = RunStats::default();
    let mut scenarios = 0u64;
    let mut noted: Vec<harness::DivergenceClass> = Vec::new();
    let mut internal = 0u64;
    while start.elapsed() < budget {
        let mut swarm = match config {
            Some(c) => Swarm::for_config(&mut rng, c),
            None => Swarm::new(&mut rng, mode),
        };
        if let Some(h) = hw {
            swarm.config.hw = h;
        }
        let callers = !args.raw && !args.reachable;
        if callers {
            swarm = swarm.callers_only();
        }
        for _ in 0..64 {
            let s = swarm.scenario(&mut rng);
            let o = run_with(&s, rev, args.strict);
            scenarios += 1;
            total.add(&o.stats);
            for n in &o.notes {
                if !noted.contains(&n.class()) {
                    noted.push(n.class());
                    eprintln!(
                        "hunt: note after {:.2}s (non-fatal; --strict makes it fatal):",
                        start.elapsed().as_secs_f64()
                    );
                    eprintln!("{n}");
                }
            }
            if let Some(d) = o.divergence {
                if (args.reachable && !d.is_reachable()) || (callers && !d.is_caller_chain()) {
                    internal += 1;
                    continue;
                }
                let class = d.class();
                let small = minimize_with(&s, rev, args.strict);
                let name = format!("{}-{}-{}", rev.name, class.name(), s.config.mode);
                let path = match write_reproducer(&args.out, &small, &name) {
                    Ok(p) => p,
                    Err(e) => return fail(e),
                };
                let d2 = run_with(&small, rev, args.strict).divergence.unwrap_or(d);
                eprintln!(
                    "hunt: divergence after {:.2}s, {} scenarios",
                    start.elapsed().as_secs_f64(),
                    scenarios
                );
                println!("{d2}");
                println!("reproducer: {} (and .bin)", path.display());
                return ExitCode::from(1);
            }
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!(
                "hunt: {:>4}s {} scenarios, {} ops, {} splits, {} replaced, {} frees, {} records",
                start.elapsed().as_secs(),
                scenarios,
                total.ops,
                total.model.superpage_splits,
                total.model.intermediate_replaced,
                total.model.tables_freed,
                total.model.records_created
            );
        }
    }
    eprintln!(
        "hunt: clean after {}s: {} scenarios, {} ops (revision {}){}",
        args.seconds,
        scenarios,
        total.ops,
        rev.name,
        if total.notes > 0 {
            format!(", {} non-fatal notes", total.notes)
        } else {
            String::new()
        }
    );
    if args.reachable {
        eprintln!("hunt: {internal} internal-API-only divergences passed over (--reachable)");
    } else if !args.raw {
        eprintln!(
            "hunt: caller ops only; {internal} divergences no caller chain reaches passed over \
             (--raw fuzzes the internal API)"
        );
    }
    let counts: Vec<String> = total
        .fields()
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    eprintln!("hunt: counters: {}", counts.join(" "));
    ExitCode::SUCCESS
}

fn minimize_cmd(
    revision: Option<String>,
    file: PathBuf,
    out: Option<PathBuf>,
    strict: bool,
) -> ExitCode {
    let rev = match pick_revision(revision) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let s = match load(&file) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let Some(d) = run_with(&s, rev, strict).divergence else {
        return fail(format!(
            "{}: no divergence under revision {}: nothing to minimize",
            file.display(),
            rev.name
        ));
    };
    // Keeps the class, and reachability when the original is reachable.
    let small = minimize_with(&s, rev, strict);
    let dest = out.unwrap_or_else(|| file.with_extension("trace"));
    if let Err(e) = std::fs::write(&dest, to_trace(&small)) {
        return fail(format!("{}: {e}", dest.display()));
    }
    println!(
        "minimized {} → {} ops ({}), written to {}",
        s.ops.len(),
        small.ops.len(),
        d.class(),
        dest.display()
    );
    print!("{}", to_trace(&small));
    ExitCode::SUCCESS
}

fn revisions() -> ExitCode {
    for r in Revision::all() {
        println!(
            "{:<30} [{}, {}] {}",
            r.name,
            r.line(),
            r.kind.name(),
            r.summary
        );
        println!("    {}", r.switches);
    }
    ExitCode::SUCCESS
}

fn encode_cmd(file: &Path, out: &Path) -> ExitCode {
    let s = match load(file) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let bytes = match harness::scenario::try_encode(&s) {
        Ok(b) => b,
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    match std::fs::write(out, bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("{}: {e}", out.display())),
    }
}

fn blame(
    revision: Option<String>,
    assume_fixed: &[String],
    strict: bool,
    files: Vec<PathBuf>,
) -> ExitCode {
    let rev = match pick_revision(revision).and_then(|r| harness::assume_fixed(r, assume_fixed)) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut any = false;
    for f in files {
        let s = match load(&f) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        match harness::blame::blame_with(&s, rev, strict) {
            None => println!("{}: clean under {}", f.display(), rev.name),
            Some(b) => {
                any = true;
                println!(
                    "{}: {} under {}; {}",
                    f.display(),
                    b.class,
                    rev.name,
                    b.verdict()
                );
            }
        }
    }
    if any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn bench(seconds: u64) -> ExitCode {
    let rev = Revision::fixed();
    for (label, orders) in [
        ("4k-only", &[0u32][..]),
        ("mixed (0/9/18)", &[0u32, 9, 18][..]),
    ] {
        let mut rng = SmallRng::seed_from_u64(7);
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < Duration::from_secs(seconds) {
            let mode = *[Mode::Ept, Mode::Npt, Mode::Shadow]
                .get(rng.gen_range(0..3))
                .unwrap_or(&Mode::Ept);
            let mut s = Swarm::new(&mut rng, Some(mode)).scenario(&mut rng);
            for op in &mut s.ops {
                let harness::Op::SetEntry(e) = op else {
                    continue;
                };
                e.order = orders[rng.gen_range(0..orders.len())];
                e.gfn &= !((1u64 << e.order) - 1);
                if let harness::scenario::MfnSel::Frame(m) = &mut e.mfn {
                    *m &= !((1u64 << e.order) - 1);
                }
            }
            ops += run(&s, rev).stats.ops;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{label:<16} {:>10.0} ops/s ({ops} ops in {secs:.1}s)",
            ops as f64 / secs
        );
    }
    bench_master_1g(seconds);
    bench_cost_ratio(seconds)
}

/// `bench --corpus`: the cost of each input of a corpus directory, replayed uninstrumented
/// (what a fuzz target's callback pays per execution of it), as a distribution and the
/// heaviest inputs' shapes.
fn bench_corpus(dir: &Path, revision: Option<String>, reps: u32) -> ExitCode {
    let rev = match pick_revision(revision) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut inputs = Vec::new();
    let mut skipped = Vec::new();
    for f in &files {
        match load(f) {
            Ok(s) => inputs.push((
                f.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                s,
            )),
            // A libFuzzer corpus may keep inputs the target does not decode (they add
            // decoder coverage): counted and named, not timed.
            Err(e) => skipped.push(e),
        }
    }
    if inputs.is_empty() {
        return fail(format!(
            "{}: no input to time ({} files, none a scenario)",
            dir.display(),
            files.len()
        ));
    }
    let c = harness::bench::corpus_cost(&inputs, rev, reps);
    println!(
        "corpus {} under {}: {} inputs, {} replays each (uninstrumented: model + reference + oracle)",
        dir.display(),
        rev.name,
        c.inputs.len(),
        reps.max(1)
    );
    if let Some(first) = skipped.first() {
        println!(
            "skipped {} files that are not a scenario (first: {first})",
            skipped.len()
        );
    }
    println!(
        "cost per input: mean {:.1} µs, median {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        c.mean_us(),
        c.quantile_us(0.5),
        c.quantile_us(0.9),
        c.quantile_us(0.99),
        c.quantile_us(1.0)
    );
    println!(
        "share of the time in the heaviest 1 % of inputs: {:.0} %, 10 %: {:.0} %",
        100.0 * c.share_of_heaviest(0.01),
        100.0 * c.share_of_heaviest(0.1)
    );
    println!(
        "ops per input: median {}, p90 {}, max {}",
        c.ops_quantile(0.5),
        c.ops_quantile(0.9),
        c.ops_quantile(1.0)
    );
    let total = c.total_us();
    println!("time by kind of op (per pass over the corpus):");
    for k in &c.by_op {
        println!(
            "  {:<24} {:>6} ops  {:>5.1} %  {:>9.2} µs per op",
            k.name,
            k.count,
            100.0 * k.us / total,
            k.us / k.count.max(1) as f64
        );
    }
    println!("heaviest inputs:");
    for i in c.inputs.iter().take(10) {
        // The first ops name the shape; a 64-op input would fill the screen.
        let names: Vec<&str> = i.shape.split(',').collect();
        let shape = match names.len() {
            n if n > 8 => format!("{},… (+{})", names[..8].join(","), n - 8),
            _ => i.shape.clone(),
        };
        println!("  {:>10.1} µs  {:>3} ops  {}  {shape}", i.us, i.ops, i.name);
    }
    ExitCode::SUCCESS
}

/// Issue 13's measure: a 1 GiB remap against a 4 KiB remap over a gigabyte populated page
/// by page, IOMMU superpages off, per configuration, on each line's fixed revision
/// ([`harness::bench`]).
fn bench_cost_ratio(seconds: u64) -> ExitCode {
    println!();
    println!("1 GiB op vs 4 KiB op over a populated 4 KiB gigabyte (median µs per op, model + reference + oracle):");
    println!();
    println!("| revision | configuration | 4 KiB op (µs) | 1 GiB op (µs) | ratio | runs |");
    println!("|---|---|---|---|---|---|");
    let budget = Duration::from_millis(seconds.max(1) * 100);
    for name in ["fixed", "master-fixed"] {
        let Some(rev) = Revision::by_name(name) else {
            eprintln!("error: no revision {name}");
            return ExitCode::from(2);
        };
        match harness::bench::cost_ratio(rev, budget) {
            Ok(rows) => {
                for r in rows {
                    println!(
                        "| {} | {} | {:.2} | {:.1} | {:.1} | {} |",
                        r.revision,
                        r.config,
                        r.op_4k_us,
                        r.op_1g_us,
                        r.ratio(),
                        r.runs
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// The master line's cost of 1 GiB ops, model and oracle together: map 1 GiB, change one
/// 4 KiB page inside (the IOMMU superpage shatters), put it back (it coalesces), unmap the
/// 1 GiB; per configuration, with IOMMU superpages and with `iommu=no-superpages` (every
/// 4 KiB entry of 1 GiB written, by the range fast path one level-1 table at a time).
fn bench_master_1g(seconds: u64) {
    let rev = Revision::by_name("master-fixed").expect("master-fixed");
    let trace = |cfg: &str| {
        format!(
            "config {cfg}\n\
             set_entry gfn=0x40000 mfn=0x140000 order=18 ram_rw rwx\n\
             set_entry gfn=0x40201 mfn=0x140201 order=0 ram_ro rwx\n\
             set_entry gfn=0x40201 mfn=0x140201 order=0 ram_rw rwx\n\
             set_entry gfn=0x40000 mfn=INVALID_MFN order=18 invalid rwx\n"
        )
    };
    for cfg in [
        "mode=ept vendor=vtd share=off superpages=1g",
        "mode=npt vendor=amd share=off superpages=1g",
        "mode=ept vendor=vtd share=on",
        "mode=ept vendor=vtd share=off superpages=4k",
    ] {
        let s = parse_trace(&trace(cfg)).expect("bench trace");
        let budget = Duration::from_millis(seconds.max(1) * 250);
        let start = Instant::now();
        let (mut runs, mut ops, mut map_pages) = (0u64, 0u64, 0u64);
        while start.elapsed() < budget {
            let out = run(&s, rev);
            assert!(
                out.divergence.is_none(),
                "bench trace diverges under {}",
                rev.name
            );
            runs += 1;
            ops += out.stats.ops;
            map_pages = out.stats.model.map_pages + out.stats.model.unmap_pages;
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / ops as f64;
        println!(
            "master 1 GiB ops {cfg:<44} {us:>9.2} µs/op ({runs} runs; {map_pages} pages \
             through the IOMMU map/unmap path per run)"
        );
    }
}

/// Arguments of the `exhaustive` subcommand.
#[derive(clap::Args)]
struct ExhaustiveArgs {
    /// p2m mode (ept, npt, shadow); default: all.
    #[arg(long)]
    mode: Option<String>,
    /// Revision to model.
    #[arg(long, default_value = "fixed")]
    revision: String,
    /// Count only sequences that run clean under this revision (holes it closed).
    #[arg(long)]
    baseline: Option<String>,
    /// Longest op sequence checked (1 to 6).
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// Wider domain: a fourth gfn and every type that can arise with an IOMMU.
    #[arg(long)]
    wide: bool,
    /// Configurations searched at once (threads); the report does not depend on it.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Plain enumeration without the reductions (to cross-check them; slower).
    #[arg(long)]
    no_reduce: bool,
    /// Pass over divergences whose inputs no Xen caller produces (internal API only; see
    /// `harness::reach`) and keep searching for reachable ones (implies --raw).
    #[arg(long)]
    reachable: bool,
    /// Search raw `set_entry` letters (the internal API) instead of the caller alphabet
    /// (the default: Xen's callers, a second vCPU inside a batch, fault injection).
    #[arg(long)]
    raw: bool,
    /// Directory for a reproducer of the divergence reported.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn exhaustive_cmd(a: ExhaustiveArgs) -> ExitCode {
    let rev = match revision_by_name(&a.revision) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let baseline = match a.baseline.as_deref().map(revision_by_name).transpose() {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let modes = match a.mode.as_deref().map(parse_mode).transpose() {
        Ok(Some(m)) => vec![m],
        Ok(None) => Mode::ALL.to_vec(),
        Err(e) => return fail(e),
    };
    if a.depth == 0 || a.depth > exhaustive::MAX_DEPTH {
        return fail(format!(
            "--depth {} out of range (1 to {})",
            a.depth,
            exhaustive::MAX_DEPTH
        ));
    }
    let opts = exhaustive::Options {
        revision: rev,
        baseline,
        depth: a.depth,
        wide: a.wide,
        jobs: a.jobs,
        reduce: !a.no_reduce,
        reachable: a.reachable,
        callers: !(a.raw || a.reachable || a.wide),
    };
    match baseline {
        Some(b) => println!(
            "exhaustive: revision {} (counting only sequences clean under {}), depth {}",
            rev.name, b.name, a.depth
        ),
        None => println!("exhaustive: revision {}, depth {}", rev.name, a.depth),
    }
    println!(
        "exhaustive: {}",
        if opts.callers {
            "caller alphabet (--raw searches set_entry letters)"
        } else {
            "raw set_entry alphabet (the internal API)"
        }
    );
    let report = exhaustive::explore(&modes, &opts);
    for c in &report.configs {
        let verdict = match &c.found {
            Some((d, s)) => format!("{} at length {}", d.class(), s.ops.len()),
            None => format!("clean up to length {}", c.depth_done),
        };
        println!(
            "  config {}: {} letters, {} sequences, {} ops, {:.2}s: {verdict}",
            c.config,
            c.alphabet,
            c.sequences,
            c.ops,
            c.elapsed.as_secs_f64()
        );
        println!(
            "    pruned: {} refused by both, {} symmetric, {} equal states{}",
            c.pruned_refused,
            c.pruned_symmetry,
            c.pruned_duplicate,
            if baseline.is_some() {
                format!(", {} baseline-divergent", c.pruned_baseline)
            } else {
                String::new()
            }
        );
        if a.reachable {
            println!(
                "    passed over: {} internal-API-only divergences (--reachable)",
                c.passed_unreachable
            );
        }
        if let Some((_, s)) = &c.found {
            for op in &s.ops {
                println!("    | {op}");
            }
        }
    }
    println!(
        "total: {} sequences, {} ops, {:.2}s",
        report.sequences(),
        report.ops(),
        report.elapsed.as_secs_f64()
    );
    let Some((d, s)) = report.shortest() else {
        let only = if a.reachable {
            " (reachable sequences)"
        } else {
            ""
        };
        println!("verdict: clean up to depth {}{only}", a.depth);
        return ExitCode::SUCCESS;
    };
    println!("{d}");
    print!("{}", to_trace(s));
    if let Some(dir) = a.out {
        let name = format!(
            "{}-{}-{}-exhaustive",
            rev.name,
            d.class().name(),
            s.config.mode
        );
        match write_reproducer(&dir, s, &name) {
            Ok(p) => println!("reproducer: {} (and .bin)", p.display()),
            Err(e) => return fail(e),
        }
    }
    ExitCode::from(1)
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`p2m-fuzz repro ... | head`) like other Unix tools.
    #[cfg(unix)]
    // SAFETY: resetting SIGPIPE to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                print!("{e}");
                return ExitCode::SUCCESS;
            }
            let first = e.to_string();
            let line = first.lines().next().unwrap_or("usage error");
            return fail(line.trim_start_matches("error: "));
        }
    };
    match cli.cmd {
        Cmd::Repro {
            revision,
            dot,
            files,
        } => repro(revision, dot, files),
        Cmd::Fmt { file } => match load(&file) {
            Ok(s) => {
                print!("{}", to_trace(&s));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::Hunt(args) => hunt(args),
        Cmd::Minimize {
            revision,
            file,
            out,
            strict,
        } => minimize_cmd(revision, file, out, strict),
        Cmd::Revisions => revisions(),
        Cmd::Encode { file, out } => encode_cmd(&file, &out),
        Cmd::Exhaustive(args) => exhaustive_cmd(args),
        Cmd::Bench {
            corpus: Some(dir),
            revision,
            reps,
            ..
        } => bench_corpus(&dir, revision, reps),
        Cmd::Bench { seconds, .. } => bench(seconds),
        Cmd::Blame {
            revision,
            files,
            assume_fixed,
            strict,
        } => blame(
            revision,
            &assume_fixed,
            strict || harness::strict_from_env(),
            files,
        ),
    }
}
