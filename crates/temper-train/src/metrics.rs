//! Run metrics: one JSON object per line in `metrics.jsonl`, and a loss-curve SVG.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io};

/// One line of `metrics.jsonl`: a training step or an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    Train {
        step: u64,
        epoch: u64,
        loss: f64,
        learning_rate: f64,
        grad_norm: f64,
        trained_tokens: usize,
        tokens: usize,
        tokens_per_second: f64,
        elapsed_seconds: f64,
        /// Seconds the step spent in all-reduces (data-parallel runs).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        all_reduce_seconds: Option<f64>,
    },
    Eval {
        step: u64,
        loss: f64,
        perplexity: f64,
        token_accuracy: f64,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        exact_match: Option<f64>,
    },
}

impl Metric {
    pub fn step(&self) -> u64 {
        match self {
            Metric::Train { step, .. } | Metric::Eval { step, .. } => *step,
        }
    }
}

/// Appends metrics to `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    lines: Vec<Metric>,
}

impl MetricsLog {
    /// Opens `path`, keeping the lines of steps up to `keep_through` (what a resumed run has
    /// already done) and dropping later ones (written after the checkpoint it resumes). A
    /// missing file starts an empty log; a file that cannot be read, or a line that is not a
    /// metric, is an error naming the file and line, and the file is left as it was. The one
    /// exception is a last line without its newline: an append a kill cut short.
    pub fn open(path: &Path, keep_through: u64) -> Result<MetricsLog> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(io(path, error)),
        };
        let torn = !text.is_empty() && !text.ends_with('\n');
        let count = text.lines().count();
        let mut lines = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Metric>(line);
            if parsed.is_err() && torn && index + 1 == count {
                break;
            }
            let metric = parsed.map_err(|e| Error::File {
                path: path.to_owned(),
                reason: format!("line {}: not a metrics line: {e}", index + 1),
            })?;
            if metric.step() <= keep_through {
                lines.push(metric);
            }
        }
        let log = MetricsLog {
            path: path.to_owned(),
            lines,
        };
        log.rewrite()?;
        Ok(log)
    }

    fn rewrite(&self) -> Result<()> {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(&serde_json::to_string(line).expect("metrics serialise"));
            text.push('\n');
        }
        Ok(temper_store::write_atomic(&self.path, text.as_bytes())?)
    }

    pub fn push(&mut self, metric: Metric) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, e))?;
        writeln!(
            file,
            "{}",
            serde_json::to_string(&metric).expect("metrics serialise")
        )
        .map_err(|e| io(&self.path, e))?;
        self.lines.push(metric);
        Ok(())
    }

    pub fn lines(&self) -> &[Metric] {
        &self.lines
    }
}

/// An SVG line chart of training loss (and evaluation loss, as dots) against steps.
pub fn loss_plot_svg(metrics: &[Metric], title: &str) -> String {
    let train: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Train { step, loss, .. } if loss.is_finite() => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    let eval: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Eval { step, loss, .. } if loss.is_finite() => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    let (width, height, margin) = (720.0, 400.0, 56.0);
    let all = train.iter().chain(&eval);
    let (mut x_max, mut y_min, mut y_max) = (1.0_f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    if y_max - y_min < 1e-9 {
        y_max = y_min + 1.0;
    }
    let pad = 0.05 * (y_max - y_min);
    let (y_lo, y_hi) = ((y_min - pad).max(0.0), y_max + pad);
    let px = |x: f64| margin + (x / x_max) * (width - 1.5 * margin);
    let py = |y: f64| height - margin - (y - y_lo) / (y_hi - y_lo) * (height - 1.7 * margin);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        width / 2.0,
        escape(title)
    );
    // Axes with five ticks each.
    svg.push_str(&format!(
        "<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{t}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n",
        m = margin,
        b = height - margin,
        r = width - 0.5 * margin,
        t = 0.7 * margin
    ));
    for i in 0..=4 {
        let x = x_max * f64::from(i) / 4.0;
        let y = y_lo + (y_hi - y_lo) * f64::from(i) / 4.0;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.3}</text>\n\
             <line x1=\"{m}\" y1=\"{yy:.1}\" x2=\"{r}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\n",
            px(x),
            height - margin + 18.0,
            x,
            margin - 6.0,
            py(y) + 4.0,
            y,
            m = margin,
            r = width - 0.5 * margin,
            yy = py(y)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">optimizer step</text>\n",
        width / 2.0,
        height - 12.0
    ));
    if !train.is_empty() {
        let points: Vec<String> = train
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            points.join(" ")
        ));
    }
    for &(x, y) in &eval {
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#d62728\"/>\n",
            px(x),
            py(y)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{x}\" y=\"40\" fill=\"#1f77b4\">— train loss</text>\n\
         <text x=\"{x}\" y=\"56\" fill=\"#d62728\">● eval loss</text>\n</svg>\n",
        x = width - 170.0
    ));
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64, loss: f64) -> Metric {
        Metric::Train {
            step,
            epoch: 0,
            loss,
            learning_rate: 1e-3,
            grad_norm: 1.0,
            trained_tokens: 10,
            tokens: 20,
            tokens_per_second: 100.0,
            elapsed_seconds: 1.0,
            all_reduce_seconds: None,
        }
    }

    #[test]
    fn a_damaged_metrics_file_is_an_error_and_stays_as_it_was() {
        let dir = std::env::temp_dir().join(format!("temper-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let line = serde_json::to_string(&train(1, 2.0)).unwrap();
        let damaged = format!("{line}\nnot json\n{line}\n");
        std::fs::write(&path, &damaged).unwrap();
        let error = MetricsLog::open(&path, 10).unwrap_err().to_string();
        assert!(
            error.contains("metrics.jsonl: line 2: not a metrics line"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);

        // A last line cut short by a kill is dropped; the rest is kept.
        std::fs::write(&path, format!("{line}\n{{\"kind\": \"tr")).unwrap();
        let log = MetricsLog::open(&path, 10).unwrap();
        assert_eq!(log.lines(), [train(1, 2.0)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_plot_draws_every_train_step_and_eval_point() {
        let mut metrics: Vec<Metric> = (1..=10).map(|s| train(s, 3.0 - 0.1 * s as f64)).collect();
        metrics.push(Metric::Eval {
            step: 10,
            loss: 2.5,
            perplexity: 2.5f64.exp(),
            token_accuracy: 0.5,
            exact_match: None,
        });
        let svg = loss_plot_svg(&metrics, "run <a>");
        let polyline = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(polyline.split(' ').count(), 10);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("run &lt;a&gt;"));
    }

    #[test]
    fn reopening_drops_lines_after_the_resumed_step() {
        let path =
            std::env::temp_dir().join(format!("temper-metrics-{}.jsonl", std::process::id()));
        let mut log = MetricsLog::open(&path, 0).unwrap();
        for step in 1..=5 {
            log.push(train(step, 1.0)).unwrap();
        }
        let log = MetricsLog::open(&path, 3).unwrap();
        assert_eq!(log.lines().len(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        std::fs::remove_file(&path).unwrap();
    }
}
