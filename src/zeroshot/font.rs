//! Text for plotters without system fonts: a drawing backend that wraps plotters' RGB bitmap backend and draws
//! every text with font8x8's public-domain 8×8 glyphs (basic Latin; anything else as `?`).
//!
//! Built without its `ttf` or `ab_glyph` features, plotters has no font of its own and panics when asked to draw
//! text; this backend answers every `draw_text` and `estimate_text_size` itself, so no text ever reaches that
//! path. Glyphs are scaled by whole pixels: sizes below 20 draw at 8 px, 20–29 at 16 px, and so on. Rotated text
//! is drawn unrotated.

use plotters::backend::BitMapBackend;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind};

/// Glyph cell size at scale 1, pixels.
pub const GLYPH_PX: u32 = 8;

/// The whole-pixel scale of a font size.
pub fn scale_of(size: f64) -> u32 {
    if size.is_finite() && size >= 20.0 {
        (size / 10.0).floor() as u32
    } else {
        1
    }
}

/// Width and height of `text` at a font size, pixels.
pub fn text_size(text: &str, size: f64) -> (u32, u32) {
    let s = scale_of(size);
    let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
    (chars.saturating_mul(GLYPH_PX * s), GLYPH_PX * s)
}

/// The 8 rows of a character's glyph (bit 0 is the leftmost pixel).
fn glyph(c: char) -> [u8; 8] {
    let table = &font8x8::legacy::BASIC_LEGACY;
    let i = c as usize;
    if i < table.len() && !c.is_control() {
        table[i]
    } else {
        table['?' as usize]
    }
}

/// plotters' RGB bitmap backend with font8x8 text.
pub struct GlyphBitmap<'a> {
    inner: BitMapBackend<'a>,
}

impl<'a> GlyphBitmap<'a> {
    /// Draws into `buf`: `width · height · 3` bytes of RGB.
    pub fn with_buffer(buf: &'a mut [u8], size: (u32, u32)) -> Self {
        Self {
            inner: BitMapBackend::with_buffer(buf, size),
        }
    }
}

type Error<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

impl<'a> DrawingBackend for GlyphBitmap<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), Error<'a>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), Error<'a>> {
        self.inner.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Error<'a>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Result<(), Error<'a>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Error<'a>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), Error<'a>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), Error<'a>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), Error<'a>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Result<(), Error<'a>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn draw_text<T: BackendTextStyle>(&mut self, text: &str, style: &T, pos: BackendCoord) -> Result<(), Error<'a>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let scale = scale_of(style.size());
        let (w, h) = text_size(text, style.size());
        let (w, h) = (
            i32::try_from(w).unwrap_or(i32::MAX),
            i32::try_from(h).unwrap_or(i32::MAX),
        );
        let anchor = style.anchor();
        let left = pos.0
            - match anchor.h_pos {
                HPos::Left => 0,
                HPos::Center => w / 2,
                HPos::Right => w,
            };
        let top = pos.1
            - match anchor.v_pos {
                VPos::Top => 0,
                VPos::Center => h / 2,
                VPos::Bottom => h,
            };
        let (width, height) = self.get_size();
        let (width, height) = (i32::try_from(width).unwrap_or(0), i32::try_from(height).unwrap_or(0));
        let (s, cell) = (scale as i32, (GLYPH_PX * scale) as i32);
        for (i, c) in text.chars().enumerate() {
            let x0 = left.saturating_add(i32::try_from(i).unwrap_or(i32::MAX).saturating_mul(cell));
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) == 0 {
                        continue;
                    }
                    for dy in 0..s {
                        for dx in 0..s {
                            let (x, y) = (x0 + col * s + dx, top + row as i32 * s + dy);
                            if (0..width).contains(&x) && (0..height).contains(&y) {
                                self.inner.draw_pixel((x, y), color)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn estimate_text_size<T: BackendTextStyle>(&self, text: &str, style: &T) -> Result<(u32, u32), Error<'a>> {
        Ok(text_size(text, style.size()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::*;

    #[test]
    fn text_is_drawn_with_the_glyphs_where_it_is_anchored() {
        let (w, h) = (40u32, 20u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = GlyphBitmap::with_buffer(&mut buf, (w, h)).into_drawing_area();
            let style = TextStyle::from(("sans-serif", 12).into_font()).color(&BLACK);
            root.draw_text("I", &style, (4, 2)).unwrap();
            root.present().unwrap();
        }
        // font8x8's "I": rows 0-6, the bar two pixels wide at columns 2-3 in rows 1-5.
        let dark = |x: u32, y: u32| buf[((y * w + x) * 3) as usize] < 128;
        let on: Vec<(u32, u32)> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| dark(x, y))
            .collect();
        assert!(!on.is_empty());
        assert!(
            on.iter().all(|&(x, y)| (4..12).contains(&x) && (2..10).contains(&y)),
            "{on:?}"
        );
        assert!(dark(4 + 3, 2 + 3), "the bar of the I");
        assert_eq!(text_size("abc", 12.0), (24, 8));
        assert_eq!(text_size("abc", 24.0), (48, 16));
    }
}
