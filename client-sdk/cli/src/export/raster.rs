//! Raster primitives of the pictures: lines, dashed lines, circles, capsule outlines, polygon
//! fills and text, drawn onto an `image` RGB buffer in pixel coordinates (x right, y down,
//! fractional; a pixel is covered when its centre is), optionally clipped to a rectangle.
//! They know nothing of the plan or of millimetres.

use std::convert::Infallible;

use embedded_graphics::mono_font::iso_8859_1::{FONT_7X13, FONT_9X15_BOLD};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::{Rgb888, RgbColor as _};
use embedded_graphics::prelude::{
    DrawTarget, Drawable, OriginDimensions, Pixel, Point as EgPoint, Size,
};
use embedded_graphics::text::{Baseline, Text};
use image::{Rgb, RgbImage};

/// A rectangle of the image that drawing stays inside (a panel), pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelRect {
    /// Top-left corner.
    pub origin_px: (u32, u32),
    pub size_px: (u32, u32),
}

impl PixelRect {
    pub fn contains(&self, x: i64, y: i64) -> bool {
        x >= self.origin_px.0 as i64
            && y >= self.origin_px.1 as i64
            && x < (self.origin_px.0 + self.size_px.0) as i64
            && y < (self.origin_px.1 + self.size_px.1) as i64
    }
}

/// embedded-graphics onto an `image` buffer (text only).
struct Canvas<'a>(&'a mut RgbImage);

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = Infallible;
    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < w && (p.y as u32) < h {
                self.0
                    .put_pixel(p.x as u32, p.y as u32, Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

pub(super) fn text_with(
    img: &mut RgbImage,
    x: i32,
    y: i32,
    s: &str,
    colour: Rgb<u8>,
    font: &MonoFont,
) {
    let style = MonoTextStyle::new(font, Rgb888::new(colour[0], colour[1], colour[2]));
    let _ = Text::with_baseline(s, EgPoint::new(x, y), style, Baseline::Top).draw(&mut Canvas(img));
}

pub(super) fn text(img: &mut RgbImage, x: i32, y: i32, s: &str, colour: Rgb<u8>) {
    text_with(img, x, y, s, colour, &FONT_7X13);
}

pub(super) fn title(img: &mut RgbImage, x: i32, y: i32, s: &str, colour: Rgb<u8>) {
    text_with(img, x, y, s, colour, &FONT_9X15_BOLD);
}

pub(super) fn blend(a: Rgb<u8>, b: Rgb<u8>, t: f64) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    Rgb([0, 1, 2].map(|i| (a[i] as f64 * (1.0 - t) + b[i] as f64 * t).round() as u8))
}

pub(super) fn put(img: &mut RgbImage, clip: Option<PixelRect>, x: i64, y: i64, c: Rgb<u8>) {
    if x < 0 || y < 0 || x >= img.width() as i64 || y >= img.height() as i64 {
        return;
    }
    if clip.is_some_and(|r| !r.contains(x, y)) {
        return;
    }
    img.put_pixel(x as u32, y as u32, c);
}

pub(super) fn mix(img: &mut RgbImage, clip: Option<PixelRect>, x: i64, y: i64, c: Rgb<u8>, t: f64) {
    if x < 0 || y < 0 || x >= img.width() as i64 || y >= img.height() as i64 {
        return;
    }
    if clip.is_some_and(|r| !r.contains(x, y)) {
        return;
    }
    let old = *img.get_pixel(x as u32, y as u32);
    img.put_pixel(x as u32, y as u32, blend(old, c, t));
}

/// Distance from `p` to the segment `a`-`b` and the parameter of the nearest point.
pub(super) fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    ((qx * qx + qy * qy).sqrt(), t)
}

/// A line of `width` pixels (square ends at the segment's ends when `square_ends`).
#[allow(clippy::too_many_arguments)]
pub(super) fn thick_line(
    img: &mut RgbImage,
    clip: Option<PixelRect>,
    a: (f64, f64),
    b: (f64, f64),
    width: f64,
    c: Rgb<u8>,
    square_ends: bool,
) {
    let r = 0.5 * width.max(1.0);
    let (x0, x1) = (a.0.min(b.0) - r - 1.0, a.0.max(b.0) + r + 1.0);
    let (y0, y1) = (a.1.min(b.1) - r - 1.0, a.1.max(b.1) + r + 1.0);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt();
    for y in y0.floor() as i64..=y1.ceil() as i64 {
        for x in x0.floor() as i64..=x1.ceil() as i64 {
            let p = (x as f64 + 0.5, y as f64 + 0.5);
            let inside = if square_ends && len > 0.0 {
                let along = ((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len;
                let across = ((p.0 - a.0) * dy - (p.1 - a.1) * dx).abs() / len;
                (0.0..=len).contains(&along) && across <= r
            } else {
                segment_distance(p, a, b).0 <= r
            };
            if inside {
                put(img, clip, x, y, c);
            }
        }
    }
}

/// Dashed thin line.
pub(super) fn dashed_line(
    img: &mut RgbImage,
    clip: Option<PixelRect>,
    a: (f64, f64),
    b: (f64, f64),
    c: Rgb<u8>,
) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt();
    let n = (len / 4.0).ceil().max(1.0) as usize;
    for i in (0..n).step_by(2) {
        let t0 = i as f64 / n as f64;
        let t1 = ((i + 1) as f64 / n as f64).min(1.0);
        thick_line(
            img,
            clip,
            (a.0 + dx * t0, a.1 + dy * t0),
            (a.0 + dx * t1, a.1 + dy * t1),
            1.5,
            c,
            false,
        );
    }
}

pub(super) fn circle(
    img: &mut RgbImage,
    clip: Option<PixelRect>,
    centre: (f64, f64),
    radius: f64,
    width: f64,
    c: Rgb<u8>,
    filled: bool,
) {
    let r = radius + width;
    for y in (centre.1 - r).floor() as i64..=(centre.1 + r).ceil() as i64 {
        for x in (centre.0 - r).floor() as i64..=(centre.0 + r).ceil() as i64 {
            let d =
                ((x as f64 + 0.5 - centre.0).powi(2) + (y as f64 + 0.5 - centre.1).powi(2)).sqrt();
            if (filled && d <= radius) || (d - radius).abs() <= 0.5 * width {
                put(img, clip, x, y, c);
            }
        }
    }
}

/// The projection of a capsule (segment `a`-`b`, `radius` pixels): a stadium, filled
/// translucently and outlined.
pub(super) fn stadium(
    img: &mut RgbImage,
    clip: PixelRect,
    a: (f64, f64),
    b: (f64, f64),
    radius: f64,
    c: Rgb<u8>,
) {
    let r = radius + 2.0;
    let (x0, x1) = (a.0.min(b.0) - r, a.0.max(b.0) + r);
    let (y0, y1) = (a.1.min(b.1) - r, a.1.max(b.1) + r);
    for y in y0.floor() as i64..=y1.ceil() as i64 {
        for x in x0.floor() as i64..=x1.ceil() as i64 {
            let d = segment_distance((x as f64 + 0.5, y as f64 + 0.5), a, b).0;
            if (d - radius).abs() <= 1.0 {
                put(img, Some(clip), x, y, c);
            } else if d < radius {
                mix(img, Some(clip), x, y, c, 0.22);
            }
        }
    }
}

/// A segment in pixels.
pub(super) type Segment2 = ((f64, f64), (f64, f64));

/// Fill the closed polygons made of `segments` (even-odd rule, pixel centres).
pub(super) fn fill_segments(
    img: &mut RgbImage,
    clip: PixelRect,
    segments: &[Segment2],
    c: Rgb<u8>,
) {
    if segments.is_empty() {
        return;
    }
    let ymin = segments
        .iter()
        .map(|s| s.0 .1.min(s.1 .1))
        .fold(f64::INFINITY, f64::min);
    let ymax = segments
        .iter()
        .map(|s| s.0 .1.max(s.1 .1))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut xs = Vec::new();
    for y in ymin.floor() as i64..=ymax.ceil() as i64 {
        let yc = y as f64 + 0.5;
        xs.clear();
        for &(a, b) in segments {
            // Half-open in y so that shared endpoints count once.
            if (a.1 <= yc) != (b.1 <= yc) {
                xs.push(a.0 + (yc - a.1) / (b.1 - a.1) * (b.0 - a.0));
            }
        }
        xs.sort_by(f64::total_cmp);
        for pair in xs.chunks_exact(2) {
            for x in (pair[0] - 0.5).ceil() as i64..=(pair[1] - 0.5).floor() as i64 {
                put(img, Some(clip), x, y, c);
            }
        }
    }
}
