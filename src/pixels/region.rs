//! A caller's region (box, polygon or mask over the original image) on the model's input grid:
//! each input pixel is in the region when the original point its centre came from is.

use super::Geometry;

/// A region over the original image, its mask decoded.
pub enum Shape<'a> {
    /// `[x0, y0, x1, y1]`.
    Box([f64; 4]),
    /// Vertices.
    Polygon(&'a [[f64; 2]]),
    /// A mask of the original's size: (width, height, row-major inside).
    Mask(u32, u32, &'a [bool]),
}

/// The region on the model's `width x height` input grid, or why it cannot be: a box or vertex
/// outside the image, a mask of another size, or no input pixel inside (an empty region).
pub fn rasterize(shape: &Shape, g: &Geometry, (width, height): (usize, usize)) -> Result<Vec<bool>, String> {
    let (ow, oh) = (g.original_width as f64, g.original_height as f64);
    let within = |x: f64, y: f64| (0.0..=ow).contains(&x) && (0.0..=oh).contains(&y);
    match shape {
        Shape::Box([x0, y0, x1, y1]) => {
            if !within(*x0, *y0) || !within(*x1, *y1) {
                return Err(format!(
                    "region.box [{x0}, {y0}, {x1}, {y1}] lies outside the image ({ow} x {oh} pixels)"
                ));
            }
            if x0 >= x1 || y0 >= y1 {
                return Err(format!(
                    "empty region: region.box [{x0}, {y0}, {x1}, {y1}] needs x0 < x1 and y0 < y1"
                ));
            }
        }
        Shape::Polygon(points) => {
            if let Some([x, y]) = points.iter().find(|[x, y]| !within(*x, *y)) {
                return Err(format!(
                    "region.polygon vertex [{x}, {y}] lies outside the image ({ow} x {oh} pixels)"
                ));
            }
        }
        Shape::Mask(w, h, _) => {
            if (*w, *h) != (g.original_width, g.original_height) {
                return Err(format!("region.mask is {w} x {h} pixels; the image is {ow} x {oh}"));
            }
        }
    }
    let mut inside = Vec::with_capacity(width * height);
    for y in 0..height {
        let oy = g.crop_y as f64 + (y as f64 + 0.5) * g.crop_height as f64 / height as f64;
        for x in 0..width {
            let ox = g.crop_x as f64 + (x as f64 + 0.5) * g.crop_width as f64 / width as f64;
            inside.push(contains(shape, ox, oy));
        }
    }
    if !inside.iter().any(|v| *v) {
        return Err(format!(
            "empty region: it covers no pixel of the model's {width} x {height} input"
        ));
    }
    Ok(inside)
}

fn contains(shape: &Shape, x: f64, y: f64) -> bool {
    match shape {
        Shape::Box([x0, y0, x1, y1]) => (*x0..*x1).contains(&x) && (*y0..*y1).contains(&y),
        Shape::Polygon(points) => {
            // Even-odd rule: a ray to the right crosses the boundary an odd number of times.
            let mut odd = false;
            let mut j = points.len() - 1;
            for i in 0..points.len() {
                let ([xi, yi], [xj, yj]) = (points[i], points[j]);
                if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                    odd = !odd;
                }
                j = i;
            }
            odd
        }
        Shape::Mask(w, h, bits) => {
            let (px, py) = (x.floor() as i64, y.floor() as i64);
            px >= 0
                && py >= 0
                && px < *w as i64
                && py < *h as i64
                && bits
                    .get(py as usize * *w as usize + px as usize)
                    .copied()
                    .unwrap_or(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(side: u32) -> Geometry {
        Geometry {
            original_width: side,
            original_height: side,
            crop_x: 0.0,
            crop_y: 0.0,
            crop_width: side as f32,
            crop_height: side as f32,
        }
    }

    #[test]
    fn boxes_polygons_and_masks_fill_the_pixels_whose_centres_they_hold() {
        let g = identity(4);
        let b = rasterize(&Shape::Box([1.0, 1.0, 3.0, 2.0]), &g, (4, 4)).unwrap();
        let on: Vec<usize> = (0..16).filter(|&i| b[i]).collect();
        assert_eq!(on, vec![5, 6]);
        let tri = [[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]];
        let p = rasterize(&Shape::Polygon(&tri), &g, (4, 4)).unwrap();
        assert!(p[0] && p[2 * 4] && !p[3 * 4] && !p[15], "{p:?}");
        let bits: Vec<bool> = (0..16).map(|i| i == 10).collect();
        let m = rasterize(&Shape::Mask(4, 4, &bits), &g, (4, 4)).unwrap();
        assert_eq!(m, bits);
        // The faults, each named.
        let e = rasterize(&Shape::Box([1.0, 1.0, 5.0, 2.0]), &g, (4, 4)).unwrap_err();
        assert!(e.contains("outside the image"), "{e}");
        let e = rasterize(&Shape::Box([1.2, 1.2, 1.3, 1.3]), &g, (4, 4)).unwrap_err();
        assert!(e.starts_with("empty region"), "{e}");
        let e = rasterize(&Shape::Mask(3, 4, &bits[..12]), &g, (4, 4)).unwrap_err();
        assert!(e.contains("3 x 4"), "{e}");
    }
}
