//! Pure layouts: which rectangle of the canvas each visible participant's tile occupies.
//! - `grid`: cells of a near-square grid in slot order; a short last row is centred;
//! - `speaker`: the featured participant large at the top, a strip of the next few below;
//! - `custom`: regions given in fractions of the canvas, filled in order.
//!
//! Coordinates and sizes are even, as I420 needs.

/// A rectangle of the composite canvas, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

fn even(v: u32) -> u32 {
    v & !1
}

/// The tiles for `n` participants on a `width`×`height` canvas, in join order.
pub fn grid(n: usize, width: u32, height: u32) -> Vec<Tile> {
    if n == 0 {
        return Vec::new();
    }
    let n32 = n as u32;
    let mut cols = 1;
    while cols * cols < n32 {
        cols += 1;
    }
    let rows = n32.div_ceil(cols);
    let w = even(width / cols).max(2);
    let h = even(height / rows).max(2);
    let y0 = even((height - h * rows) / 2);
    (0..n32)
        .map(|i| {
            let row = i / cols;
            let col = i % cols;
            let in_row = if row == rows - 1 {
                n32 - row * cols
            } else {
                cols
            };
            let x0 = even((width - w * in_row) / 2);
            Tile {
                x: x0 + col * w,
                y: y0 + row * h,
                w,
                h,
            }
        })
        .collect()
}

/// Tiles in speaker mode's strip, at most (so speaker mode shows at most this many + 1).
pub const SPEAKER_STRIP: usize = 5;
/// The strip's share of the canvas height (one fifth).
const STRIP_FRACTION: u32 = 5;
/// Regions of a custom layout, at most.
pub const MAX_REGIONS: usize = 100;

/// A region of a custom layout, in fractions of the canvas (0..=1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// How the visible participants are arranged.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum LayoutMode {
    Grid,
    Speaker,
    Custom { regions: Vec<Region> },
}

/// Why a layout was refused (each names the problem for the client).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayoutError {
    #[error("a custom layout needs 1 to {MAX_REGIONS} regions")]
    RegionCount,
    #[error(
        "region {index} ({region:?}) is off the canvas: x, y, w and h are fractions of it, with w and h above 0, x + w at most 1 and y + h at most 1"
    )]
    OffCanvas { index: usize, region: Region },
}

/// What a publisher off screen is asked to send at most (REMB): a trickle that keeps its
/// encoder warm and gives a picture at once when it comes on screen.
pub const HIDDEN_PUBLISH_KBPS: u32 = 100;
/// The floor and ceiling of what a visible publisher is asked for.
pub const MIN_VISIBLE_PUBLISH_KBPS: u32 = 200;
pub const MAX_PUBLISH_KBPS: u32 = 2500;
/// A tile gets this many times its share of the canvas' bitrate: its source is encoded once
/// by the publisher and then scaled and encoded again, and needs the head room.
const TILE_HEADROOM: f64 = 2.0;

/// The most a publisher should send (kbit/s) given its tile (`None`: off screen) on a
/// `canvas` encoded at `canvas_kbps`.
pub fn publish_cap_kbps(tile: Option<Tile>, canvas: (u32, u32), canvas_kbps: u32) -> u32 {
    let Some(t) = tile else {
        return HIDDEN_PUBLISH_KBPS;
    };
    let share = (t.w as f64 * t.h as f64) / (canvas.0 as f64 * canvas.1 as f64).max(1.0);
    ((share * canvas_kbps as f64 * TILE_HEADROOM).round() as u32)
        .clamp(MIN_VISIBLE_PUBLISH_KBPS, MAX_PUBLISH_KBPS)
}

/// Small slack for fractions like 1/3 + 2/3 written in decimal.
const EPSILON: f64 = 1e-6;

impl LayoutMode {
    /// A custom layout whose regions are all on the canvas.
    pub fn custom(regions: Vec<Region>) -> Result<Self, LayoutError> {
        if regions.is_empty() || regions.len() > MAX_REGIONS {
            return Err(LayoutError::RegionCount);
        }
        for (index, r) in regions.iter().enumerate() {
            let ok = [r.x, r.y, r.w, r.h].iter().all(|v| v.is_finite())
                && r.x >= 0.0
                && r.y >= 0.0
                && r.w > 0.0
                && r.h > 0.0
                && r.x + r.w <= 1.0 + EPSILON
                && r.y + r.h <= 1.0 + EPSILON;
            if !ok {
                return Err(LayoutError::OffCanvas { index, region: *r });
            }
        }
        Ok(LayoutMode::Custom { regions })
    }

    /// How many tiles this layout shows with at most `max_tiles`.
    pub fn capacity(&self, max_tiles: usize) -> usize {
        match self {
            LayoutMode::Grid => max_tiles,
            LayoutMode::Speaker => max_tiles.min(SPEAKER_STRIP + 1),
            LayoutMode::Custom { regions } => max_tiles.min(regions.len()),
        }
    }

    /// The tiles for `n` participants (at most the capacity), in the layout's order.
    pub fn tiles(&self, n: usize, width: u32, height: u32) -> Vec<Tile> {
        match self {
            LayoutMode::Grid => grid(n, width, height),
            LayoutMode::Speaker => speaker(n, width, height),
            LayoutMode::Custom { regions } => regions
                .iter()
                .take(n)
                .map(|r| region_tile(*r, width, height))
                .collect(),
        }
    }
}

/// A region's pixels: even, at least 2x2, inside the canvas.
fn region_tile(r: Region, width: u32, height: u32) -> Tile {
    let px = |f: f64, total: u32| even((f.clamp(0.0, 1.0) * total as f64).round() as u32);
    let x = px(r.x, width).min(width.saturating_sub(2));
    let y = px(r.y, height).min(height.saturating_sub(2));
    let w = px(r.w, width).clamp(2, width - x);
    let h = px(r.h, height).clamp(2, height - y);
    Tile {
        x,
        y,
        w: even(w),
        h: even(h),
    }
}

/// Speaker mode: the first participant large (the canvas' shape, centred above the strip),
/// the next ones in a centred strip along the bottom; one participant fills the canvas.
pub fn speaker(n: usize, width: u32, height: u32) -> Vec<Tile> {
    if n <= 1 {
        return grid(n, width, height);
    }
    let strip_h = even(height / STRIP_FRACTION).max(2);
    let main_h = height - strip_h;
    let main_w = even((main_h as u64 * width as u64 / height as u64) as u32).min(width);
    let mut tiles = vec![Tile {
        x: even((width - main_w) / 2),
        y: 0,
        w: main_w,
        h: main_h,
    }];
    let k = (n - 1).min(SPEAKER_STRIP) as u32;
    let w = even(width / SPEAKER_STRIP as u32).max(2);
    let x0 = even((width - w * k) / 2);
    tiles.extend((0..k).map(|i| Tile {
        x: x0 + i * w,
        y: main_h,
        w,
        h: strip_h,
    }));
    tiles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_are_asked_for_what_their_tile_needs() {
        let canvas = (1280, 720);
        assert_eq!(publish_cap_kbps(None, canvas, 1500), HIDDEN_PUBLISH_KBPS);
        let full = grid(1, 1280, 720)[0];
        assert_eq!(publish_cap_kbps(Some(full), canvas, 1500), MAX_PUBLISH_KBPS);
        let quarter = grid(4, 1280, 720)[0];
        assert_eq!(publish_cap_kbps(Some(quarter), canvas, 1500), 750);
        let stamp = grid(16, 1280, 720)[0];
        assert_eq!(publish_cap_kbps(Some(stamp), canvas, 1500), 200);
        let strip = speaker(3, 1280, 720)[1];
        assert_eq!(
            publish_cap_kbps(Some(strip), canvas, 1500),
            MIN_VISIBLE_PUBLISH_KBPS
        );
    }

    #[test]
    fn speaker_mode_puts_the_first_large_and_the_rest_in_a_strip() {
        let t = speaker(4, 1280, 720);
        assert_eq!(
            t[0],
            Tile {
                x: 128,
                y: 0,
                w: 1024,
                h: 576
            }
        );
        assert_eq!(t.len(), 4);
        for s in &t[1..] {
            assert_eq!((s.y, s.w, s.h), (576, 256, 144));
        }
        assert_eq!(t[1].x, 256, "a short strip is centred");
        assert_eq!(speaker(1, 1280, 720), grid(1, 1280, 720));
        assert_eq!(speaker(20, 1280, 720).len(), SPEAKER_STRIP + 1);
    }

    #[test]
    fn custom_regions_become_even_pixels_on_the_canvas() {
        let m = LayoutMode::custom(vec![
            Region {
                x: 0.0,
                y: 0.0,
                w: 0.5,
                h: 1.0,
            },
            Region {
                x: 0.5,
                y: 0.0,
                w: 0.5,
                h: 0.333,
            },
        ])
        .unwrap();
        assert_eq!(m.capacity(16), 2);
        let t = m.tiles(5, 1280, 720);
        assert_eq!(
            t,
            vec![
                Tile {
                    x: 0,
                    y: 0,
                    w: 640,
                    h: 720
                },
                Tile {
                    x: 640,
                    y: 0,
                    w: 640,
                    h: 240
                }
            ]
        );
    }

    #[test]
    fn regions_off_the_canvas_are_refused() {
        let r = |x, y, w, h| Region { x, y, w, h };
        assert_eq!(LayoutMode::custom(vec![]), Err(LayoutError::RegionCount));
        for (bad, index) in [
            (vec![r(0.0, 0.0, 1.0, 1.0), r(0.6, 0.0, 0.5, 0.5)], 1),
            (vec![r(-0.1, 0.0, 0.5, 0.5)], 0),
            (vec![r(0.0, 0.0, 0.0, 0.5)], 0),
            (vec![r(0.0, 0.9, 0.5, 0.2)], 0),
            (vec![r(f64::NAN, 0.0, 0.5, 0.5)], 0),
        ] {
            match LayoutMode::custom(bad) {
                Err(LayoutError::OffCanvas { index: i, .. }) => assert_eq!(i, index),
                other => panic!("{other:?}"),
            }
        }
        assert!(LayoutMode::custom(vec![r(1.0 / 3.0, 0.0, 2.0 / 3.0, 1.0)]).is_ok());
    }

    fn overlaps(a: &Tile, b: &Tile) -> bool {
        a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
    }

    #[test]
    fn one_fills_the_canvas() {
        assert_eq!(
            grid(1, 1280, 720),
            vec![Tile {
                x: 0,
                y: 0,
                w: 1280,
                h: 720
            }]
        );
    }

    #[test]
    fn three_is_two_by_two_with_centred_last_row() {
        let t = grid(3, 1280, 720);
        assert_eq!(
            t[0],
            Tile {
                x: 0,
                y: 0,
                w: 640,
                h: 360
            }
        );
        assert_eq!(
            t[1],
            Tile {
                x: 640,
                y: 0,
                w: 640,
                h: 360
            }
        );
        assert_eq!(
            t[2],
            Tile {
                x: 320,
                y: 360,
                w: 640,
                h: 360
            }
        );
    }

    #[test]
    fn tiles_are_inside_disjoint_even_and_counted() {
        for (w, h) in [
            (1280, 720),
            (640, 360),
            (1920, 1080),
            (320, 240),
            (1000, 562),
        ] {
            for n in 0..=25 {
                let tiles = grid(n, w, h);
                assert_eq!(tiles.len(), n);
                for (i, a) in tiles.iter().enumerate() {
                    assert!(
                        a.x + a.w <= w && a.y + a.h <= h,
                        "{n} tiles on {w}x{h}: {a:?}"
                    );
                    assert!([a.x, a.y, a.w, a.h].iter().all(|v| v.is_multiple_of(2)));
                    for b in &tiles[i + 1..] {
                        assert!(!overlaps(a, b), "{a:?} overlaps {b:?}");
                    }
                }
            }
        }
    }
}
