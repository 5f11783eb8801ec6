//! `RUN_DIR/metrics.jsonl`: one JSON object per line, one line per optimizer step (and one for the evaluation
//! before the first step). Fields that a line does not have are omitted; `tern plot` reads them back.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const METRICS_FILE: &str = "metrics.jsonl";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Optimizer steps completed (0: before training).
    pub step: u64,
    /// Training loss of this step (mean over its micro-batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Cross-entropy part, nats/token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce: Option<f64>,
    /// KL-distillation part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// Learning rate this step used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Training tokens per second of this step (forward, backward, teacher and optimizer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Training tokens consumed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Wall-clock seconds of training so far (all sessions of the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    /// CPU seconds (user + system, all threads) the run's process spent so far, all sessions: on a shared
    /// machine, `cpu_s / cores` is the wall clock the run would have taken with the cores to itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
    /// Held-out cross-entropy of the hard-quantized model, nats/token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// `exp(eval_loss)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_ppl: Option<f64>,
    /// Held-out perplexity of the full-precision model (step 0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp_eval_ppl: Option<f64>,
    /// Hestia: the pressure λ this step used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<f64>,
    /// Hestia: every soft-quantized tensor's temperature this step, in layout order (names in `hestia.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperatures: Option<Vec<f64>>,
    /// Block-wise stage: the block this step trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{context} {path}")]
    Io {
        path: PathBuf,
        context: &'static str,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Appends records, one flushed line each (a killed run loses at most the line being written).
pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    pub fn open_append(path: &Path) -> Result<Self, MetricsError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| MetricsError::Io {
                path: path.to_path_buf(),
                context: "opening",
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append(&mut self, record: &MetricsRecord) -> Result<(), MetricsError> {
        let mut line = serde_json::to_string(record).map_err(|e| MetricsError::Parse {
            path: self.path.clone(),
            line: 0,
            message: format!("serialising a record: {e}"),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| MetricsError::Io {
                path: self.path.clone(),
                context: "appending to",
                source,
            })
    }
}

/// Reads every record. A last line without its newline (a write cut short by a kill) is ignored.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        context: "reading",
        source,
    })?;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| MetricsError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Keeps only records up to `step` (a resumed run re-does the steps after its checkpoint), atomically.
pub fn truncate_after(path: &Path, step: u64) -> Result<(), MetricsError> {
    if !path.exists() {
        return Ok(());
    }
    let kept: Vec<MetricsRecord> = read_metrics(path)?.into_iter().filter(|r| r.step <= step).collect();
    let mut text = String::new();
    for r in &kept {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    tern_format::write_atomic(path, text.as_bytes()).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        context: "rewriting",
        source,
    })
}

/// CPU time (user + system, all threads) of this process in seconds, from `/proc/self/stat` (Linux; `None`
/// elsewhere).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based), in clock
    // ticks of 1/100 s on Linux.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// The `cpu_s` of the last record of a run (what a resumed session adds its own CPU time to).
pub fn last_cpu_seconds(path: &Path) -> f64 {
    read_metrics(path)
        .ok()
        .and_then(|r| r.iter().rev().find_map(|r| r.cpu_s))
        .unwrap_or(0.0)
}
