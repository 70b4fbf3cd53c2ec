//! Pure grid layout: which rectangle of the canvas each participant's tile occupies.
//! Tiles are cells of a near-square grid in join order; a short last row is centred.
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

#[cfg(test)]
mod tests {
    use super::*;

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
