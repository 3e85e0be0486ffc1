//! The results: a table for people and JSON for scripts.

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    /// Which scenario, e.g. `hot`.
    pub(crate) scenario: String,
    /// Its parameters, e.g. `clients=32`.
    pub(crate) case: String,
    /// What was measured, e.g. `ops/s`.
    pub(crate) metric: String,
    /// The value.
    pub(crate) value: f64,
    /// The goal, if the project has one, e.g. `>= 50000`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
    /// Whether the value meets the goal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) meets_target: Option<bool>,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) figures: Vec<Figure>,
}

/// A figure's goal from issue 5: at least or at most `value`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    value: f64,
    at_least: bool,
}

impl Goal {
    /// Higher is better.
    pub(crate) fn at_least(value: f64) -> Self {
        Self { value, at_least: true }
    }

    /// Lower is better.
    pub(crate) fn at_most(value: f64) -> Self {
        Self { value, at_least: false }
    }
}

impl Report {
    /// The value of a figure this run has measured.
    pub(crate) fn value(&self, scenario: &str, case: &str, metric: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|figure| {
                figure.scenario == scenario && figure.case == case && figure.metric == metric
            })
            .map(|figure| figure.value)
    }

    /// Adds a figure without a goal.
    pub(crate) fn add(&mut self, scenario: &str, case: &str, metric: &str, value: f64) {
        self.add_with(scenario, case, metric, value, None);
    }

    /// Adds a figure, judged against `goal` when there is one.
    pub(crate) fn add_with(
        &mut self,
        scenario: &str,
        case: &str,
        metric: &str,
        value: f64,
        goal: Option<Goal>,
    ) {
        let (target, meets_target) = match goal {
            Some(Goal { value: goal, at_least }) => {
                let (sign, met) =
                    if at_least { (">=", value >= goal) } else { ("<=", value <= goal) };
                (Some(format!("{sign} {}", trim(goal))), Some(met))
            }
            None => (None, None),
        };
        self.figures.push(Figure {
            scenario: scenario.into(),
            case: case.into(),
            metric: metric.into(),
            value,
            target,
            meets_target,
        });
    }

    pub(crate) fn table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .figures
            .iter()
            .map(|figure| {
                let verdict = match figure.meets_target {
                    Some(true) => format!("{}  ok", figure.target.clone().unwrap_or_default()),
                    Some(false) => format!("{}  MISSED", figure.target.clone().unwrap_or_default()),
                    None => String::new(),
                };
                [
                    figure.scenario.clone(),
                    figure.case.clone(),
                    figure.metric.clone(),
                    trim(figure.value),
                    verdict,
                ]
            })
            .collect();
        let header = ["scenario", "case", "metric", "value", "target"].map(String::from);
        let mut widths = [0; 5];
        for row in std::iter::once(&header).chain(&rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        std::iter::once(&header)
            .chain(&rows)
            .map(|row| {
                format!(
                    "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2],
                    w3 = widths[3]
                )
                .trim_end()
                .to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A number printed without noise: integers as integers, others with 3 significant decimals.
fn trim(value: f64) -> String {
    if (value.fract() == 0.0 && value.abs() < 1e15) || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}
