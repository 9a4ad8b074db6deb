//! The training loop: batches in a seeded order, one compiled graph run per
//! micro-step (forward, loss, backward, AdamW in place), metrics and a plot,
//! atomic checkpoints, exact resumption, Ctrl-C and NaN handling; on one
//! process or as one rank of a data-parallel group.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};
use lumind_compilers::fnv::fnv1a;
use lumind_compilers::optim::AdamWConfig;
use lumind_compilers::{Backend, Fusion};

use super::checkpoint::{self, RunState};
use super::config::{LossMean, TrainConfig};
use super::graph::Update;
use super::lock::RunLock;
use super::metrics::{self, Metrics};
use super::schedule::lr_at;
use super::session::{TrainCompile, TrainSession};
use super::world::World;
use crate::data::chat::{ChatData, Kind};
use crate::data::pretrain::{Position, PretrainData};
use crate::model::{ModelDef, Precision, Weights};
use crate::tokenizer::Tokenizer;
use crate::train::config::StageName;
use crate::train::Batch;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Where a stage's batches come from.
pub enum Data {
    Text(PretrainData),
    Chat(Box<ChatData>),
}

impl Data {
    pub fn open(cfg: &TrainConfig, tok: &Tokenizer) -> Result<Data> {
        let d = &cfg.data;
        Ok(match cfg.stage {
            StageName::Pretrain => Data::Text(PretrainData::open(&d.train, d.max_seq_len, d.pad_to, d.on_bad_line, cfg.seed)?),
            StageName::Sft | StageName::Lora => {
                Data::Chat(Box::new(ChatData::open(&d.train, Kind::Sft, tok, d.max_seq_len, cfg.sft.loss_on, d.on_bad_line, cfg.seed)?))
            }
            StageName::Dpo => {
                Data::Chat(Box::new(ChatData::open(&d.train, Kind::Pairs, tok, d.max_seq_len, cfg.sft.loss_on, d.on_bad_line, cfg.seed)?))
            }
        })
    }
    pub fn len(&self) -> usize {
        match self {
            Data::Text(d) => d.len(),
            Data::Chat(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn skipped(&self) -> usize {
        match self {
            Data::Text(d) => d.index.skipped,
            Data::Chat(d) => d.index.skipped,
        }
    }
    /// Records skipped so far because nothing in them is scored.
    pub fn unscored(&self) -> usize {
        match self {
            Data::Text(_) => 0,
            Data::Chat(d) => d.unscored_count(),
        }
    }
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        match self {
            Data::Text(d) => d.order(epoch),
            Data::Chat(d) => d.order(epoch),
        }
    }
    pub fn batch(&self, tok: &Tokenizer, order: &[usize], pos: Position, n: usize) -> Result<(Batch, Position)> {
        match self {
            Data::Text(d) => d.batch(tok, order, pos, n),
            Data::Chat(d) => d.batch(tok, order, pos, n),
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub state: RunState,
    pub interrupted: bool,
    pub last: Option<Metrics>,
}

fn install_ctrl_c() {
    // a second install (tests, or a second run in one process) is harmless
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to quit now)");
    });
    // SIGTERM and SIGUSR1 too: Slurm sends SIGTERM before a time limit;
    // `mpirun` forwards SIGUSR1 to every rank, and on Ctrl-C sends them
    // SIGTERM `odls_base_sigkill_timeout` seconds later (then SIGKILL as
    // long again). Finish the step, save, exit.
    #[cfg(unix)]
    {
        extern "C" fn on_term(_: libc::c_int) {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                // SAFETY: _exit is async-signal-safe
                unsafe { libc::_exit(143) }
            }
        }
        // SAFETY: the handler only touches an atomic, or ends the process
        unsafe {
            for sig in [libc::SIGTERM, libc::SIGUSR1] {
                libc::signal(sig, on_term as extern "C" fn(libc::c_int) as libc::sighandler_t);
            }
        }
    }
}

/// Optimizer steps the run will take on `ranks` processes.
pub fn total_steps(cfg: &TrainConfig, records: usize, ranks: usize) -> u64 {
    let o = &cfg.optim;
    let all = batches(cfg, records, ranks).div_ceil(o.accumulation_steps as u64);
    o.max_steps.map_or(all, |m| (m as u64).min(all)).max(1)
}

/// Micro-steps in all the run's epochs (each takes `batch_size` rows on every rank).
fn batches(cfg: &TrainConfig, records: usize, ranks: usize) -> u64 {
    (records.div_ceil(cfg.optim.batch_size * ranks) as u64).saturating_mul(cfg.optim.epochs as u64)
}

/// The training session a config asks for: its model's weights (or a
/// seeded init), the stage's graph with `update`, and DPO's reference from
/// `[dpo] reference`. `lumind train` and `lumind grad` both build theirs
/// here, so they run the same graph with the same inputs.
pub fn session_for(cfg: &TrainConfig, def: &ModelDef, update: Update, device: Backend, fusion: Fusion) -> Result<TrainSession> {
    let weights = match &cfg.weights {
        Some(p) => crate::weights_file::load(def, p)?,
        None => Weights::random(def, cfg.seed, None)?,
    };
    let how = TrainCompile { fusion, precision: cfg.precision };
    let mut session = TrainSession::on(device, def, weights, cfg.data.max_seq_len, cfg.stage(), update, how)?;
    if let Some(r) = &cfg.dpo.reference {
        session.set_reference(&crate::weights_file::load(def, r)?)?;
    }
    Ok(session)
}

/// Run (or resume) the training job of `cfg` in this process alone.
pub fn train(cfg: &TrainConfig, resume: bool, device: Backend) -> Result<Summary> {
    train_in(cfg, resume, device, &World::single())
}

/// Run (or resume) the training job of `cfg` as one rank of `world`: each
/// rank takes its share of every micro-batch, the gradients are summed
/// over the ranks before each update, and rank 0 alone prints, logs and
/// writes the run directory.
pub fn train_in(cfg: &TrainConfig, resume: bool, device: Backend, world: &World) -> Result<Summary> {
    let out = cfg.out.as_path();
    let root = world.is_root();
    if world.size() > 1 && device != Backend::Cpu {
        bail!(
            "data-parallel training sums gradients on the CPU (MPI); --device {device} across {} ranks needs NCCL, which lumind does not have yet",
            world.size()
        );
    }
    let def = ModelDef::load(&cfg.model)?;
    let tok = Tokenizer::load_or_default(cfg.tokenizer.as_deref())?;
    if tok.vocab_size() > def.vocab_size {
        bail!("the tokenizer has {} tokens but model `{}` only {} (vocab_size)", tok.vocab_size(), def.name, def.vocab_size);
    }
    // (a hash of the whole config: ranks started with different configs
    // would run different graphs and wait on each other forever)
    world.check_same("the config (each rank must read the same config file)", fnv1a(cfg.fingerprint().as_bytes()))?;
    let _lock = if root { Some(RunLock::acquire(out)?) } else { None };
    if root {
        let stale = crate::io::remove_stale_temps(out, None);
        if stale > 0 {
            eprintln!("removed {stale} temporary files that killed runs left in {}", out.display());
        }
    }
    let data = Data::open(cfg, &tok)?;
    // (ranks whose data differ would run out at different steps, and one
    // would wait on the others' sums forever)
    let seen = format!("{} {} {} {}", def.name, def.vocab_size, tok.vocab_size(), data.len());
    world.check_same("the model, tokenizer or data (each rank must read the same files)", fnv1a(seen.as_bytes()))?;
    cfg.check_against(&def, data.len(), world.size()).map_err(|e| anyhow::anyhow!("{e:#} (model {})", cfg.model.display()))?;
    let fusion = cfg.fusion;
    let adamw = AdamWConfig { max_grad_norm: cfg.optim.grad_clip, weight_decay: cfg.optim.weight_decay, ..AdamWConfig::default() };
    let update = match world.comm() {
        Some(c) => Update::AllReducedAdamW(adamw, c.clone()),
        None => Update::AdamW(adamw),
    };
    let ckpt_path = checkpoint::path(out);

    let t_compile = Instant::now();
    let mut session = session_for(cfg, &def, update, device, fusion)?;
    let compile_ms = t_compile.elapsed().as_secs_f64() * 1e3;
    let mut state = if resume {
        if !ckpt_path.exists() {
            bail!("--resume: no checkpoint at {}", ckpt_path.display());
        }
        let c = checkpoint::load(out, &session.trainable)?;
        if c.state.fingerprint != cfg.fingerprint() {
            bail!(
                "--resume: {} was made with a different config (model, data, stage, optimizer or seed changed); \
                 restore that config or train into another `out`",
                ckpt_path.display()
            );
        }
        if c.state.ranks != world.size() {
            bail!(
                "--resume: {} was written by a run of {} rank(s), this one has {}: resume with the same number of ranks \
                 (`mpirun -np {}`), since the ranks' shares of each batch and the data order depend on it",
                ckpt_path.display(),
                c.state.ranks,
                world.size(),
                c.state.ranks
            );
        }
        world.check_same("the checkpoint to resume (`out` must be a directory every rank reads)", c.state.micro_step)?;
        if root {
            metrics::truncate_after(out, c.state.micro_step)?;
        }
        session.set_trained(&c.trained)?;
        session.set_optimizer_state(&c.optimizer)?;
        if root {
            eprintln!(
                "resuming {} at step {} (epoch {}, record {})",
                out.display(),
                c.state.step,
                c.state.position.epoch,
                c.state.position.index
            );
        }
        c.state
    } else {
        if root {
            if ckpt_path.exists() {
                bail!("{} already holds a checkpoint: pass --resume to continue it, or set another `out`", out.display());
            }
            let _ = std::fs::remove_file(out.join("metrics.jsonl"));
        }
        RunState { seed: cfg.seed, fingerprint: cfg.fingerprint(), ranks: world.size(), ..Default::default() }
    };
    if root {
        crate::io::write_atomic(&out.join("config.toml"), toml::to_string(cfg)?.as_bytes())?;
        let ranks = if world.size() > 1 {
            let c = world.comm().expect("a group has a communicator");
            format!(" on each of {} ranks ({})", world.size(), c.transport())
        } else {
            String::new()
        };
        eprintln!(
            "{:?} `{}` on {} ({} records{}), {} steps of {} x {} {}{ranks}; {} trained tensors; graph compiled in {:.0} ms",
            cfg.stage,
            def.name,
            cfg.data.train.display(),
            data.len(),
            if data.skipped() > 0 { format!(", {} bad lines skipped", data.skipped()) } else { String::new() },
            total_steps(cfg, data.len(), world.size()),
            cfg.optim.accumulation_steps,
            cfg.optim.batch_size,
            if cfg.stage == StageName::Dpo { "pairs" } else { "sequences" },
            session.trainable.len(),
            compile_ms
        );
        if cfg.precision == Precision::Bf16 {
            let cpu = lumind_compilers::kernels::bf16_gemm::available();
            eprintln!(
                "mixed precision: {}; weights, gradients, optimizer state and checkpoints in f32",
                if cpu { "matrix products in bf16 (AVX512-BF16)" } else { "this CPU has no AVX512-BF16, so matrix products run in f32" }
            );
        }
    }
    install_ctrl_c();
    INTERRUPTED.store(false, Ordering::SeqCst);
    let summary = run_loop(cfg, &def, &tok, &data, &mut session, &mut state, world)?;
    if root {
        metrics::plot(out, &format!("{} {:?} loss", def.name, cfg.stage))?;
    }
    Ok(summary)
}

/// One micro-step of this rank: its rows of the micro-batch, where the data
/// stands after the whole micro-batch (every rank's rows), and the scored
/// units among its rows.
struct Micro {
    batch: Batch,
    next: Position,
    units: f64,
}

/// Scored units of a batch: label tokens, or for DPO the pairs that score.
fn units(stage: StageName, b: &Batch) -> f64 {
    match stage {
        _ if b.scored() == 0 => 0.0,
        StageName::Dpo => (b.batch / 2) as f64,
        _ => b.scored() as f64,
    }
}

/// A rank's rows when the data ran out before its share: one unscored row
/// (a pair for DPO), run with weight 0 so that the rank still joins the
/// step's all-reduce.
fn filler(stage: StageName, tok: &Tokenizer) -> Batch {
    let rows = if stage == StageName::Dpo { 2 } else { 1 };
    Batch { batch: rows, seq: 1, tokens: vec![tok.bos; rows], targets: vec![-100; rows] }
}

/// The next `n` micro-steps of this rank, from `pos` on: micro-batch `j`
/// takes records `[start_j, start_j + batch_size x ranks)` of the epoch's
/// order (fewer at its end), and rank r the r-th `batch_size` of them, so
/// the ranks' rows together are exactly one process's batch of that size.
fn plan(
    cfg: &TrainConfig,
    tok: &Tokenizer,
    data: &Data,
    order: &mut Vec<usize>,
    mut pos: Position,
    n: u64,
    world: &World,
) -> Result<Vec<Micro>> {
    let b = cfg.optim.batch_size;
    let mut micros = vec![];
    for _ in 0..n {
        if pos.index >= order.len() {
            pos = Position { epoch: pos.epoch + 1, index: 0 };
            *order = data.order(pos.epoch);
        }
        let avail = (order.len() - pos.index).min(b * world.size());
        let (start, end) = ((world.rank() * b).min(avail), ((world.rank() + 1) * b).min(avail));
        let batch = if end > start {
            data.batch(tok, order, Position { epoch: pos.epoch, index: pos.index + start }, end - start)?.0
        } else {
            filler(cfg.stage, tok)
        };
        pos = Position { epoch: pos.epoch, index: pos.index + avail };
        micros.push(Micro { units: units(cfg.stage, &batch), batch, next: pos });
    }
    Ok(micros)
}

fn run_loop(
    cfg: &TrainConfig,
    def: &ModelDef,
    tok: &Tokenizer,
    data: &Data,
    session: &mut TrainSession,
    state: &mut RunState,
    world: &World,
) -> Result<Summary> {
    let out = cfg.out.as_path();
    let root = world.is_root();
    let o = &cfg.optim;
    let accum = o.accumulation_steps as u64;
    let total = total_steps(cfg, data.len(), world.size());
    let total_micro = total * accum;
    let bar = if root { crate::progress::bar(total, state.step) } else { indicatif::ProgressBar::hidden() };
    let crash_after: Option<u64> = std::env::var("LUMIND_TEST_ABORT_AFTER_STEP").ok().and_then(|v| v.parse().ok());
    // test hook: as if Ctrl-C came during this micro-step
    let interrupt_at: Option<u64> = std::env::var("LUMIND_TEST_INTERRUPT_AT_MICRO_STEP").ok().and_then(|v| v.parse().ok());
    let mut order = data.order(state.position.epoch);
    let in_sums = || world.comm().map(|c| c.seconds());
    let (sums_at_start, mut sums_before) = (in_sums(), in_sums());
    let (step_at_start, elapsed_at_start) = (state.step, state.elapsed);
    let mut window_start = Instant::now();
    let mut last = None;
    let mut interrupted = false;
    'run: while state.micro_step < total_micro {
        // the rest of this optimizer step, planned whole: the weight of a
        // micro-step in the step's loss depends on all of them
        let left = (accum - state.micro_step % accum).min(total_micro - state.micro_step);
        let micros = plan(cfg, tok, data, &mut order, state.position, left, world)?;
        if state.window.micro_steps == 0 || state.window.units == 0.0 {
            let mut u = [micros.iter().map(|m| m.units).sum::<f64>()];
            world.sum(&mut u);
            state.window.units = u[0];
        }
        for m in micros {
            let t = Instant::now();
            let micro = state.micro_step + 1;
            if interrupt_at == Some(micro) {
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
            let apply = micro.is_multiple_of(accum) || micro == total_micro;
            let step = micro.div_ceil(accum);
            let lr = lr_at(o.learning_rate, micro, total_micro, o.warmup_steps as u64 * accum);
            let weight = match o.loss_mean {
                LossMean::Tokens => (m.units / state.window.units.max(1.0)) as f32,
                LossMean::MicroBatches if m.units > 0.0 => 1.0 / (accum * world.size() as u64) as f32,
                LossMean::MicroBatches => 0.0,
            };
            let l = session.step(&m.batch, lr, step, apply, weight)?;
            // (AdamW skips an update whose gradient norm is not finite, so the
            // weights in memory stay good too)
            let bad = if !l.loss.is_finite() {
                Some(format!("the loss is {}", l.loss))
            } else {
                l.grad_norm.filter(|g| !g.is_finite()).map(|g| format!("the gradient norm is {g}"))
            };
            if let Some(what) = bad {
                bar.abandon();
                bail!(
                    "{what} at step {step} (micro-step {micro}); stopping. The last good checkpoint (step {}) is in {}",
                    last_checkpoint_step(out)?,
                    out.display()
                );
            }
            state.elapsed += t.elapsed().as_secs_f64();
            state.micro_step = micro;
            state.position = m.next;
            // (the sums live in the run state, so a checkpoint taken in the
            // middle of an accumulation carries the micro-steps already done)
            let w = &mut state.window;
            w.micro_steps += 1;
            w.weight += weight;
            w.loss += l.loss * weight;
            w.ce += l.ce * weight;
            w.aux += l.aux * weight;
            if let Some((acc, margin)) = l.dpo {
                w.reward_acc += acc * weight;
                w.reward_margin += margin * weight;
            }
            if m.units > 0.0 {
                w.tokens += (m.batch.batch * m.batch.seq) as u64;
            }
            if apply {
                state.step = step;
                let w = std::mem::take(&mut state.window);
                // the step's sums over every rank, and whether any was interrupted
                let mut sums = [w.loss, w.ce, w.aux, w.reward_acc, w.reward_margin, w.weight]
                    .map(f64::from)
                    .into_iter()
                    .chain([w.tokens as f64, INTERRUPTED.load(Ordering::SeqCst) as u8 as f64])
                    .collect::<Vec<_>>();
                world.sum(&mut sums);
                let mean = |i: usize| (sums[i] / sums[5].max(f64::MIN_POSITIVE)) as f32;
                let tokens = sums[6] as u64;
                state.tokens += tokens;
                let m = Metrics {
                    step,
                    micro_step: micro,
                    epoch: state.position.epoch,
                    loss: mean(0),
                    ce: mean(1),
                    aux: mean(2),
                    lr,
                    grad_norm: l.grad_norm.unwrap_or(0.0),
                    tokens: state.tokens,
                    tokens_per_s: tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9),
                    elapsed_s: state.elapsed,
                    ranks: world.size(),
                    all_reduce_s: in_sums().zip(sums_before).map(|(now, before)| now - before),
                    reward_acc: l.dpo.map(|_| mean(3)),
                    reward_margin: l.dpo.map(|_| mean(4)),
                };
                if root && (step.is_multiple_of(cfg.log.every as u64) || step == total) {
                    metrics::append(out, &m)?;
                }
                bar.set_position(step);
                let dpo = m.reward_acc.map_or(String::new(), |a| format!("  acc {a:.2} margin {:.3}", m.reward_margin.unwrap_or(0.0)));
                bar.set_message(format!("loss {:.4}{dpo}  lr {:.2e}  {:.0} tok/s", m.loss, lr, m.tokens_per_s));
                // without a terminal the bar is hidden: print a line every tenth of the run
                if root && bar.is_hidden() && (step.is_multiple_of((total / 10).max(1)) || step == total) {
                    eprintln!("step {step}/{total}  loss {:.4}{dpo}  lr {:.2e}  {:.0} tok/s", m.loss, lr, m.tokens_per_s);
                }
                last = Some(m);
                window_start = Instant::now();
                sums_before = in_sums();
                if step.is_multiple_of(cfg.checkpoint.every as u64) && step < total {
                    save(out, state, session, def, world)?;
                }
                if crash_after == Some(step) {
                    // test hook: die like a killed process, without cleanup
                    std::process::abort();
                }
                // (the ranks stop together, at the end of a step, where
                // the checkpoint holds no rank's partial gradient)
                if sums[7] > 0.0 {
                    interrupted = true;
                    break 'run;
                }
            } else if world.size() == 1 && INTERRUPTED.load(Ordering::SeqCst) {
                interrupted = true;
                break 'run;
            }
        }
    }
    save(out, state, session, def, world)?;
    bar.finish_and_clear();
    let result =
        if matches!(session.stage, crate::train::graph::Stage::Lora(_)) { out.join("adapter") } else { out.join("model.safetensors") };
    if !root {
        return Ok(Summary { state: state.clone(), interrupted, last });
    }
    if data.unscored() > 0 {
        eprintln!(
            "warning: {} records had no assistant token within max_seq_len ({}) and were skipped",
            data.unscored(),
            cfg.data.max_seq_len
        );
    }
    if interrupted {
        eprintln!(
            "interrupted at step {} (micro-step {}); checkpoint saved in {}; continue with --resume",
            state.step,
            state.micro_step,
            out.display()
        );
    } else {
        eprintln!(
            "done: {} steps, {} tokens in {:.1}s ({:.0} tokens/s); final loss {:.4}; {}",
            state.step,
            state.tokens,
            state.elapsed,
            state.tokens as f64 / state.elapsed.max(1e-9),
            last.as_ref().map_or(f32::NAN, |m| m.loss),
            result.display()
        );
    }
    if let (Some(now), Some(start)) = (in_sums(), sums_at_start) {
        let steps = ((state.step - step_at_start) as f64).max(1.0);
        eprintln!(
            "all-reduce over {} ranks: {:.1} ms per step, {:.1}% of the training time (waiting for the other ranks included)",
            world.size(),
            (now - start) * 1e3 / steps,
            100.0 * (now - start) / (state.elapsed - elapsed_at_start).max(1e-9)
        );
    }
    Ok(Summary { state: state.clone(), interrupted, last })
}

/// Rank 0 writes the checkpoint; every rank holds the same weights and
/// optimizer state, and at the end of a step no partial gradient.
fn save(out: &Path, state: &RunState, session: &TrainSession, def: &ModelDef, world: &World) -> Result<()> {
    if !world.is_root() {
        return Ok(());
    }
    let trained = session.trained();
    checkpoint::save(out, state, &trained, &session.optimizer_state())?;
    match &session.stage {
        crate::train::graph::Stage::Lora(cfg) => crate::lora::save_adapter(&out.join("adapter"), cfg, &trained)?,
        _ => trained.save(&out.join("model.safetensors"))?,
    }
    metrics::plot(out, &format!("{} loss", def.name))
}

fn last_checkpoint_step(out: &Path) -> Result<String> {
    let p = checkpoint::path(out);
    if !p.exists() {
        return Ok("none".into());
    }
    let meta = crate::model::weights::Tensors::load_metadata(&p)?;
    let st: Option<RunState> = meta.get("lumind_run_state").and_then(|s| serde_json::from_str(s).ok());
    Ok(st.map_or("unknown".into(), |s| s.step.to_string()))
}
