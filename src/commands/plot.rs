//! `tern plot RUN_DIR`: draws `loss.svg` (training loss per step, held-out loss at each evaluation) and `lr.svg`
//! from `RUN_DIR/metrics.jsonl`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use plotters::prelude::*;
use tern_quantizer::metrics::{read_metrics, MetricsRecord, METRICS_FILE};

#[derive(clap::Args)]
pub struct Args {
    /// A training run directory (the --checkpoint-dir of `tern quantize`).
    pub run_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let written = plot_run(&args.run_dir)?;
    for p in written {
        eprintln!("wrote {}", p.display());
    }
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
    Ok(vec![loss, lr])
}
