//! A customer's usage against its limit over time, drawn server-side as SVG: no script, no chart
//! library, nothing from another host (the page's CSP allows none).

use maud::{Markup, html};

/// A value at a time (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub at_ms: i64,
    pub value: i64,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// The chart's geometry: times in `[from_ms, to_ms]` across, 0 to `top` up.
struct Frame {
    from_ms: i64,
    to_ms: i64,
    top: f64,
}

impl Frame {
    fn x(&self, at_ms: i64) -> f64 {
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        let at = at_ms.clamp(self.from_ms, self.to_ms);
        LEFT + (at - self.from_ms) as f64 / span * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, value: i64) -> f64 {
        let plot = HEIGHT - TOP - BOTTOM;
        TOP + plot - (value.max(0) as f64 / self.top).min(1.0) * plot
    }

    /// A step line through `points` (each value holds until the next), carried on to the end.
    fn steps(&self, points: &[Point]) -> String {
        let mut path = String::new();
        for (i, point) in points.iter().enumerate() {
            let (x, y) = (self.x(point.at_ms), self.y(point.value));
            if i == 0 {
                path.push_str(&format!("{x:.1},{y:.1}"));
            } else {
                path.push_str(&format!(" {x:.1},{:.1} {x:.1},{y:.1}", self.y(points[i - 1].value)));
            }
        }
        if let Some(last) = points.last() {
            path.push_str(&format!(" {:.1},{:.1}", self.x(self.to_ms), self.y(last.value)));
        }
        path
    }
}

/// The usage plot: `usage` (the projected estimate at each recorded observation, oldest
/// first) as a solid line and `limit` (the lowest DISABLE limit then) as a dashed one, over
/// `[from_ms, to_ms]`. `money` writes an amount for the labels; `day` a time.
pub fn usage(
    usage: &[Point],
    limit: &[Point],
    from_ms: i64,
    to_ms: i64,
    money: impl Fn(i64) -> String,
    day: impl Fn(i64) -> String,
) -> Markup {
    let highest = usage.iter().chain(limit).map(|p| p.value).max().unwrap_or(0);
    let frame = Frame { from_ms, to_ms, top: (highest as f64 * 1.1).max(1.0) };
    let summary = match (usage.last(), limit.last()) {
        (Some(now), Some(limit)) => format!(
            "{} observations from {} to {}; the latest estimate is {} against a DISABLE limit of {}.",
            usage.len(),
            day(from_ms),
            day(to_ms),
            money(now.value),
            money(limit.value)
        ),
        (Some(now), None) => format!(
            "{} observations from {} to {}; the latest estimate is {}, with no DISABLE limit.",
            usage.len(),
            day(from_ms),
            day(to_ms),
            money(now.value)
        ),
        (None, _) => format!("No observations recorded from {} to {}.", day(from_ms), day(to_ms)),
    };
    let axis_y = HEIGHT - BOTTOM;
    html! {
        svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            role="img" aria-labelledby="plot-title plot-desc" {
            title id="plot-title" { "Usage against the DISABLE limit" }
            desc id="plot-desc" { (summary) }
            line x1=(LEFT) y1=(axis_y) x2=(WIDTH - RIGHT) y2=(axis_y) stroke="#888" {}
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(axis_y) stroke="#888" {}
            text x=(LEFT - 6.0) y=(axis_y) text-anchor="end" font-size="11" { (money(0)) }
            text x=(LEFT - 6.0) y=(TOP + 10.0) text-anchor="end" font-size="11" { (money(frame.top as i64)) }
            text x=(LEFT) y=(HEIGHT - 8.0) font-size="11" { (day(from_ms)) }
            text x=(WIDTH - RIGHT) y=(HEIGHT - 8.0) text-anchor="end" font-size="11" { (day(to_ms)) }
            @if !limit.is_empty() {
                polyline class="limit" points=(frame.steps(limit)) fill="none" stroke="#c0392b"
                    stroke-width="1.5" stroke-dasharray="6 4" {}
            }
            @if !usage.is_empty() {
                polyline class="usage" points=(frame.steps(usage)) fill="none" stroke="#1f6feb"
                    stroke-width="2" {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: i64, value: i64) -> Point {
        Point { at_ms, value }
    }

    fn plot(usage_points: &[Point], limit: &[Point]) -> String {
        usage(usage_points, limit, 0, 1000, |v| format!("{v}¤"), |t| format!("t{t}")).into_string()
    }

    #[test]
    fn usage_is_a_step_line_carried_to_the_end_under_a_dashed_limit() {
        let svg = plot(&[at(0, 0), at(500, 50)], &[at(0, 100)]);
        // x: 90 to 708 over 0..1000 ms; y: 12 (top = 110) to 192 (0).
        let y50 = 12.0 + 180.0 - 50.0 / 110.0 * 180.0;
        let usage = format!(r#"points="90.0,192.0 399.0,192.0 399.0,{y50:.1} 708.0,{y50:.1}""#);
        assert!(svg.contains(&usage), "{svg}");
        let y100 = 12.0 + 180.0 - 100.0 / 110.0 * 180.0;
        let limit = format!(r#"points="90.0,{y100:.1} 708.0,{y100:.1}""#);
        assert!(svg.contains(&limit) && svg.contains("stroke-dasharray"), "{svg}");
        assert!(svg.contains("the latest estimate is 50¤ against a DISABLE limit of 100¤"), "{svg}");
    }

    #[test]
    fn values_outside_the_frame_are_clamped_and_an_empty_plot_says_so() {
        let svg = plot(&[at(-50, -7), at(2000, 10)], &[]);
        assert!(svg.contains(r#"points="90.0,192.0 708.0,192.0"#), "{svg}");
        assert!(!svg.contains("class=\"limit\""));
        let empty = plot(&[], &[]);
        assert!(empty.contains("No observations recorded from t0 to t1000."), "{empty}");
        assert!(!empty.contains("polyline"));
    }

    #[test]
    fn labels_are_escaped() {
        let svg = usage(&[at(0, 1)], &[], 0, 1, |_| "<b>".into(), |_| "&".into()).into_string();
        assert!(!svg.contains("<b>") && svg.contains("&lt;b&gt;") && svg.contains("&amp;"));
    }
}
