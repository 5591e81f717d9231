//! Loss-curve PNG from a train run's records, drawn with plotters' bitmap backend.
//!
//! plotters renders text only with its `ttf` (system fonts via font-kit) or `ab_glyph`
//! (a font file registered at run time) features; neither is enabled, and CI machines may
//! have no fonts. So this file draws tick labels itself with a built-in 3×5 pixel font
//! (digits, '.', '-', 'e', '+' and the legend's capitals): axes, grid, ticks with numbers, the
//! training loss in blue and the eval loss (when logged) in orange, a dot at every eval
//! step, with a "TRAIN"/"EVAL" legend; the title "TRAINING LOSS" and the axis names
//! "STEP" (below) and "LOSS" (left, one letter a line). [`plot_overlay`] draws several
//! runs on one chart (`recipe report A B --plot`).

use std::path::Path;

use plotters::prelude::*;

use super::report::{ReportError, TrainRecord};

/// 3×5 glyphs, rows top to bottom, 3 bits per row (MSB = left column).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '+' => [0b000, 0b010, 0b111, 0b010, 0b000],
        'e' => [0b000, 0b111, 0b111, 0b100, 0b011],
        // Capitals for the legend ("TRAIN", "EVAL"), title and axis names.
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'N' => [0b101, 0b111, 0b111, 0b111, 0b101],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'G' => [0b111, 0b100, 0b101, 0b101, 0b111],
        'O' => [0b111, 0b101, 0b101, 0b101, 0b111],
        'S' => [0b111, 0b100, 0b111, 0b001, 0b111],
        'P' => [0b111, 0b101, 0b111, 0b100, 0b100],
        _ => return None,
    })
}

const PX: i32 = 2; // font pixel size
const ADV: i32 = 4 * PX; // glyph advance

fn text_width(s: &str) -> i32 {
    s.chars().count() as i32 * ADV - PX
}

/// Draws `s` with its top-left corner at (x, y).
fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    s: &str,
    x: i32,
    y: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let gx = x + i as i32 * ADV;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    let px = gx + col * PX;
                    let py = y + r as i32 * PX;
                    area.draw(&Rectangle::new(
                        [(px, py), (px + PX, py + PX)],
                        BLACK.filled(),
                    ))?;
                }
            }
        }
    }
    Ok(())
}

/// "Nice" tick values (1, 2, 5 × 10^k spacing) covering [lo, hi], and the decimals to print.
fn ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, usize) {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut v = Vec::new();
    let mut t = first;
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    (v, decimals)
}

fn label(v: f64, decimals: usize) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        format!("{v:.1e}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// Writes a width×height PNG of loss (and eval loss) against step.
/// Records without a loss are skipped; with no loss at all, only the axes are drawn.
pub fn plot_loss_curve(
    records: &[TrainRecord],
    path: &Path,
    width: u32,
    height: u32,
) -> Result<(), ReportError> {
    let train = points(records, |r| r.loss);
    let eval = points(records, |r| r.eval_loss);
    // The legend only when there is something to tell apart.
    let names = if eval.is_empty() {
        ["", ""]
    } else {
        ["TRAIN", "EVAL"]
    };
    let series = [
        Series {
            name: names[0].to_string(),
            color: BLUE,
            points: train,
            dots: false,
        },
        // Evals are sparse: mark each one.
        Series {
            name: names[1].to_string(),
            color: ORANGE,
            points: eval,
            dots: true,
        },
    ];
    draw_chart(&series, path, width, height)
}

/// `recipe report A B --plot`: the training loss of several runs on one chart, run k
/// (1-based, in the order given) in the k-th color with legend "k"; its eval losses in
/// the same color, a dot at each.
pub fn plot_overlay(
    runs: &[Vec<TrainRecord>],
    path: &Path,
    width: u32,
    height: u32,
) -> Result<(), ReportError> {
    let mut series = Vec::new();
    for (k, recs) in runs.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        series.push(Series {
            name: (k + 1).to_string(),
            color,
            points: points(recs, |r| r.loss),
            dots: false,
        });
        series.push(Series {
            name: String::new(),
            color,
            points: points(recs, |r| r.eval_loss),
            dots: true,
        });
    }
    draw_chart(&series, path, width, height)
}

const ORANGE: RGBColor = RGBColor(230, 120, 20);
/// Run colors of an overlay (blue and orange first, as in a single run's chart).
const PALETTE: [RGBColor; 6] = [
    BLUE,
    ORANGE,
    RGBColor(40, 160, 40),
    RGBColor(200, 30, 30),
    RGBColor(140, 60, 190),
    RGBColor(120, 120, 120),
];

/// One curve: (step, value) points, a legend name ("" for none), dots at each point.
struct Series {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    dots: bool,
}

/// The finite values of one field against step.
fn points(records: &[TrainRecord], f: impl Fn(&TrainRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| f(r).filter(|l| l.is_finite()).map(|l| (r.step as f64, l)))
        .collect()
}

fn draw_chart(series: &[Series], path: &Path, width: u32, height: u32) -> Result<(), ReportError> {
    let perr = |e: &dyn std::fmt::Display| ReportError::Plot {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let all = series.iter().flat_map(|s| &s.points);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    (y0, y1) = (y0 - pad, y1 + pad);

    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let (w, h) = (width as i32, height as i32);
    // Room for the title above, tick labels and "STEP" below, "LOSS" and tick labels left.
    let line = 5 * PX + 8;
    let (left, right, top, bottom) = (16 + ADV + 9 * ADV, 16, 8 + line, 8 + 2 * line);
    let (pw, ph) = ((w - left - right).max(1), (h - top - bottom).max(1));
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * f64::from(pw)).round() as i32;
    let py = |y: f64| top + ph - ((y - y0) / (y1 - y0) * f64::from(ph)).round() as i32;
    let grid = RGBColor(225, 225, 225);

    let (yt, yd) = ticks(y0, y1, 5);
    for &t in &yt {
        let y = py(t);
        root.draw(&PathElement::new(vec![(left, y), (left + pw, y)], grid))
            .map_err(|e| perr(&e))?;
        root.draw(&PathElement::new(vec![(left - 4, y), (left, y)], BLACK))
            .map_err(|e| perr(&e))?;
        let s = label(t, yd);
        draw_text(&root, &s, left - 8 - text_width(&s), y - 5 * PX / 2).map_err(|e| perr(&e))?;
    }
    let (xt, xd) = ticks(x0, x1, 6);
    for &t in &xt {
        let x = px(t);
        root.draw(&PathElement::new(vec![(x, top), (x, top + ph)], grid))
            .map_err(|e| perr(&e))?;
        root.draw(&PathElement::new(
            vec![(x, top + ph), (x, top + ph + 4)],
            BLACK,
        ))
        .map_err(|e| perr(&e))?;
        let s = label(t, xd);
        draw_text(&root, &s, x - text_width(&s) / 2, top + ph + 8).map_err(|e| perr(&e))?;
    }
    root.draw(&PathElement::new(
        vec![(left, top), (left, top + ph), (left + pw, top + ph)],
        BLACK,
    ))
    .map_err(|e| perr(&e))?;
    let title = "TRAINING LOSS";
    draw_text(&root, title, left + (pw - text_width(title)) / 2, 8).map_err(|e| perr(&e))?;
    let xname = "STEP";
    draw_text(
        &root,
        xname,
        left + (pw - text_width(xname)) / 2,
        top + ph + line + 4,
    )
    .map_err(|e| perr(&e))?;
    for (i, c) in "LOSS".chars().enumerate() {
        let y = top + (ph - 4 * 7 * PX) / 2 + i as i32 * 7 * PX;
        draw_text(&root, &c.to_string(), 6, y).map_err(|e| perr(&e))?;
    }

    for s in series {
        let pix: Vec<(i32, i32)> = s.points.iter().map(|&(x, y)| (px(x), py(y))).collect();
        if pix.len() > 1 {
            root.draw(&PathElement::new(pix.clone(), s.color.stroke_width(2)))
                .map_err(|e| perr(&e))?;
        }
        if pix.len() == 1 || s.dots {
            for &p in &pix {
                root.draw(&Circle::new(p, 3, s.color.filled()))
                    .map_err(|e| perr(&e))?;
            }
        }
    }
    let named: Vec<&Series> = series.iter().filter(|s| !s.name.is_empty()).collect();
    let lx = left + pw - 8 - 5 * ADV - 24;
    for (i, s) in named.iter().enumerate() {
        let y = top + 8 + i as i32 * 8 * PX;
        root.draw(&PathElement::new(
            vec![(lx, y + 5), (lx + 18, y + 5)],
            s.color.stroke_width(2),
        ))
        .map_err(|e| perr(&e))?;
        draw_text(&root, &s.name, lx + 24, y).map_err(|e| perr(&e))?;
    }
    root.present().map_err(|e| perr(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_values() {
        let (t, d) = ticks(0.0, 10.0, 5);
        assert_eq!(t, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(d, 0);
        let (t, d) = ticks(1.93, 2.61, 5);
        assert_eq!(d, 1);
        assert_eq!(t.len(), 4); // 2.0 .. 2.6 by 0.2 (within float rounding)
        assert_eq!(label(t[0], d), "2.0");
    }

    #[test]
    fn writes_decodable_png() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("loss.png");
        let recs: Vec<TrainRecord> = (0..40)
            .map(|i| TrainRecord {
                step: i * 10,
                loss: Some(3.0 * (-(i as f64) / 15.0).exp() + 0.5),
                eval_loss: (i % 10 == 9).then_some(1.2),
                ..Default::default()
            })
            .collect();
        plot_loss_curve(&recs, &path, 480, 320).expect("plot");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height big-endian at bytes 16..24.
        assert_eq!(
            u32::from_be_bytes(bytes[16..20].try_into().expect("w")),
            480
        );
        assert_eq!(
            u32::from_be_bytes(bytes[20..24].try_into().expect("h")),
            320
        );
        let img = image::load_from_memory(&bytes).expect("decode").to_rgb8();
        assert_eq!(img.dimensions(), (480, 320));
        // Some blue curve pixels, some orange, some black text/axes.
        let count = |f: &dyn Fn(&image::Rgb<u8>) -> bool| img.pixels().filter(|p| f(p)).count();
        assert!(count(&|p| p.0 == [0, 0, 255]) > 100);
        assert!(count(&|p| p.0 == [230, 120, 20]) > 50);
        assert!(count(&|p| p.0 == [0, 0, 0]) > 200);
        // Title (top strip), "STEP" (bottom strip), "LOSS" (left strip): black text there.
        let black_in = |xs: std::ops::Range<u32>, ys: std::ops::Range<u32>| {
            ys.flat_map(|y| xs.clone().map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0 == [0, 0, 0])
                .count()
        };
        assert!(black_in(0..480, 0..18) > 40, "title");
        assert!(black_in(0..480, 320 - 24..320) > 20, "x axis name");
        assert!(black_in(0..14, 0..320) > 20, "y axis name");
        // Two runs overlaid: run 2 (orange) shifted down, each with its own color.
        let lower: Vec<TrainRecord> = recs
            .iter()
            .map(|r| TrainRecord {
                loss: r.loss.map(|l| l - 0.3),
                ..r.clone()
            })
            .collect();
        let over = dir.path().join("overlay.png");
        plot_overlay(&[recs.clone(), lower], &over, 480, 320).expect("overlay");
        let img = image::open(&over).expect("decode").to_rgb8();
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(count([0, 0, 255]) > 100);
        assert!(count([230, 120, 20]) > 100);
        // Empty records still give a valid image with axes.
        plot_loss_curve(&[], &path, 100, 80).expect("plot empty");
        assert_eq!(image::open(&path).expect("decode").width(), 100);
    }
}
