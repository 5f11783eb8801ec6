//! `tern plot RUN_DIR`: draws `loss.svg` (training loss per step, held-out loss at each evaluation), `lr.svg`, and
//! for Hestia runs `temperature.svg` (every tensor's temperature over the run), from `RUN_DIR/metrics.jsonl`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use plotters::prelude::*;
use tern_quantizer::metrics::{read_metrics, MetricsRecord, METRICS_FILE};

#[derive(clap::Args)]
pub struct Args {
    /// A training run directory (the --checkpoint-dir of `tern quantize`); with --compare, several, each as
    /// LABEL=DIR (a stage directory, or a run directory whose stages are read in order).
    #[arg(required = true)]
    pub run_dirs: Vec<String>,
    /// Draw one chart of held-out perplexity for several runs into this SVG instead of each run's own charts.
    #[arg(long, value_name = "OUT.svg")]
    pub compare: Option<PathBuf>,
    /// --compare: x axis — training tokens, CPU hours (process CPU time / 2 cores: the wall clock of a quiet
    /// 2-core machine) or wall-clock hours.
    #[arg(long, value_enum, default_value = "tokens")]
    pub x: CompareAxis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareAxis {
    Tokens,
    CpuHours,
    WallHours,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(out) = &args.compare {
        compare_runs(out, &args.run_dirs, args.x)?;
        eprintln!("wrote {}", out.display());
        return Ok(());
    }
    for dir in &args.run_dirs {
        for p in plot_run(Path::new(dir))? {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// The metrics of a run in order: its own `metrics.jsonl`, or its stages' (`stage-*`), with the x values of later
/// stages continuing from the earlier ones.
fn run_series(dir: &Path, axis: CompareAxis) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut dirs = vec![dir.to_path_buf()];
    if !dir.join(METRICS_FILE).exists() {
        let mut stages: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(METRICS_FILE).exists())
            .collect();
        stages.sort();
        dirs = stages;
    }
    let mut out = Vec::new();
    let mut offset = 0.0;
    for d in dirs {
        let records = read_metrics(&d.join(METRICS_FILE))?;
        let x_of = |r: &MetricsRecord| match axis {
            CompareAxis::Tokens => r.tokens.map(|t| t as f64),
            CompareAxis::CpuHours => r.cpu_s.map(|c| c / 3600.0 / 2.0),
            CompareAxis::WallHours => r.elapsed_s.map(|e| e / 3600.0),
        };
        let mut last = 0.0f64;
        for r in &records {
            let x = if r.step == 0 { Some(0.0) } else { x_of(r) };
            if let Some(x) = x {
                last = last.max(x);
                if let Some(p) = r.eval_ppl {
                    out.push((offset + x, p));
                }
            }
        }
        offset += last;
    }
    Ok(out)
}

/// Held-out perplexity (log scale) against the chosen x axis, one line per `LABEL=DIR`.
fn compare_runs(out: &Path, runs: &[String], axis: CompareAxis) -> anyhow::Result<()> {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    let mut series = Vec::new();
    for spec in runs {
        let (label, dir) = spec.split_once('=').unwrap_or((spec.as_str(), spec.as_str()));
        let pts: Vec<(f64, f64)> = run_series(Path::new(dir), axis)?
            .into_iter()
            .filter(|p| p.1.is_finite() && p.1 > 0.0)
            .map(|(x, p)| (x, p.log10()))
            .collect();
        series.push((label.to_string(), pts));
    }
    let all = || series.iter().flat_map(|(_, p)| p.iter());
    let (x0, x1) = range(all().map(|p| p.0)).context("no held-out evaluations to plot")?;
    let (y0, y1) = range(all().map(|p| p.1)).context("no held-out evaluations to plot")?;
    let root = SVGBackend::new(out, (900, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", out.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("held-out perplexity of the ternary model", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(match axis {
            CompareAxis::Tokens => "training tokens",
            CompareAxis::CpuHours => "hours on 2 cores (process CPU time / 2)",
            CompareAxis::WallHours => "wall-clock hours",
        })
        .y_desc("log10 perplexity")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (label, pts)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// `(min, max)` of the values, widened when flat so the axis has a range.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1e-12) * 1e-3);
    Some((lo - pad, hi + pad))
}

type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

fn line_chart(path: &Path, title: &str, y_desc: &str, series: &[Series]) -> anyhow::Result<()> {
    let all = || series.iter().flat_map(|(_, _, pts)| pts.iter());
    let (x0, x1) = range(all().map(|p| p.0)).context("nothing to plot")?;
    let (y0, y1) = range(all().map(|p| p.1)).context("nothing to plot")?;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (name, color, points) in series {
        if points.is_empty() {
            continue;
        }
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn points(records: &[MetricsRecord], f: impl Fn(&MetricsRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| f(r).map(|v| (r.step as f64, v)))
        .filter(|p| p.1.is_finite())
        .collect()
}

/// Writes `loss.svg` and `lr.svg` into `run_dir`; returns their paths.
pub fn plot_run(run_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let records = read_metrics(&run_dir.join(METRICS_FILE))?;
    if records.is_empty() {
        bail!("{} has no records", run_dir.join(METRICS_FILE).display());
    }
    let loss = run_dir.join("loss.svg");
    line_chart(
        &loss,
        "loss",
        "nats / token",
        &[
            ("training loss", BLUE, points(&records, |r| r.loss)),
            ("held-out CE (ternary)", RED, points(&records, |r| r.eval_loss)),
        ],
    )?;
    let lr = run_dir.join("lr.svg");
    line_chart(
        &lr,
        "learning rate",
        "lr",
        &[("learning rate", GREEN, points(&records, |r| r.lr))],
    )?;
    let mut written = vec![loss, lr];
    if records.iter().any(|r| r.temperatures.is_some()) {
        let t = run_dir.join("temperature.svg");
        temperature_chart(&t, &records)?;
        written.push(t);
    }
    Ok(written)
}

/// Every soft-quantized tensor's temperature against the step (one line each, coloured by tensor kind: the
/// names are in `hestia.json`, in the order of the `temperatures` arrays), plus the pressure on a second scale.
fn temperature_chart(path: &Path, records: &[MetricsRecord]) -> anyhow::Result<()> {
    let info: Option<serde_json::Value> = std::fs::read_to_string(path.with_file_name("hestia.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let names: Vec<String> = info
        .as_ref()
        .and_then(|i| i.get("tensors"))
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .map(|t| t.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    const KINDS: [(&str, RGBColor); 7] = [
        ("attn_q", RGBColor(31, 119, 180)),
        ("attn_k", RGBColor(255, 127, 14)),
        ("attn_v", RGBColor(44, 160, 44)),
        ("attn_output", RGBColor(214, 39, 40)),
        ("ffn_gate", RGBColor(148, 103, 189)),
        ("ffn_up", RGBColor(140, 86, 75)),
        ("ffn_down", RGBColor(227, 119, 194)),
    ];
    let series_count = records
        .iter()
        .filter_map(|r| r.temperatures.as_ref().map(Vec::len))
        .max()
        .unwrap_or(0);
    let all: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.temperatures.as_ref().map(|t| (r.step as f64, t)))
        .flat_map(|(x, t)| t.iter().map(move |&v| (x, v)))
        .collect();
    let (x0, x1) = range(all.iter().map(|p| p.0)).context("no temperatures to plot")?;
    let (_, y1) = range(all.iter().map(|p| p.1)).context("no temperatures to plot")?;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Hestia temperature per tensor (colour: kind)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("temperature")
        .draw()
        .map_err(|e| err(&e))?;
    let mut labelled = [false; KINDS.len()];
    for i in 0..series_count {
        let pts: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| {
                r.temperatures
                    .as_ref()
                    .and_then(|t| t.get(i))
                    .map(|&v| (r.step as f64, v))
            })
            .collect();
        let kind = names
            .get(i)
            .and_then(|n| KINDS.iter().position(|(k, _)| n.contains(&format!(".{k}."))));
        let color = kind.map_or(RGBColor(120, 120, 120), |k| KINDS[k].1);
        let series = chart
            .draw_series(LineSeries::new(pts, color.mix(0.6).stroke_width(1)))
            .map_err(|e| err(&e))?;
        if let Some(k) = kind {
            if !labelled[k] {
                labelled[k] = true;
                series
                    .label(KINDS[k].0)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The Pareto frontier of mixed precision: least total sensitivity (Σ Ω) against the file's linear-weight bytes,
/// with the chosen assignment marked.
pub fn frontier_chart(path: &Path, frontier: &[(u64, f64)], chosen_bytes: u64) -> anyhow::Result<()> {
    let pts: Vec<(f64, f64)> = frontier
        .iter()
        .filter(|p| p.1.is_finite() && p.1 > 0.0)
        .map(|&(b, s)| (b as f64 / 1e6, s.log10()))
        .collect();
    let (x0, x1) = range(pts.iter().map(|p| p.0)).context("empty frontier")?;
    let (y0, y1) = range(pts.iter().map(|p| p.1)).context("empty frontier")?;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "mixed precision: sensitivity vs size (Pareto frontier)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("file size, MB")
        .y_desc("log10 Σ Ω")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    let x = chosen_bytes as f64 / 1e6;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(x, y0), (x, y1)],
            RED.stroke_width(1),
        )))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
