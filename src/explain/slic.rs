//! SLIC superpixels (Achanta et al. 2012) as the `simple_clustering` crate (0.2, MIT / Apache-2.0)
//! computes them, step for step and with the same arithmetic, so its segments come out the same;
//! but with the job's check between iterations, between bands of clusters and between rows, since
//! the crate's one call runs for seconds on a large image and cannot be stopped. The crate's seed
//! placement (`init_seeds`, `perturb`) is public and used as is.

use palette::white_point::D65;
use palette::{FromColor, Lab, Srgb};
use simple_clustering::seed::{init_seeds, perturb};
use simple_clustering::Superpixel;

use super::regression::Check;
use crate::runtime::preprocess::InputError;
use crate::runtime::RuntimeError;

/// The crate's iterations of assignment and update.
const ITERATIONS: usize = 10;

/// Clusters assigned between two checks.
const CLUSTERS_PER_CHECK: usize = 64;

/// Segments of an RGB image (`width x height x 3` bytes): one label per pixel (row-major), as
/// `simple_clustering::slic_from_bytes(k, m, width, height, None, rgb)` gives them.
pub(super) fn slic(
    k: u32,
    m: u8,
    width: u32,
    height: u32,
    rgb: &[u8],
    check: &Check,
) -> Result<Vec<usize>, RuntimeError> {
    let refuse = |why: &str| -> RuntimeError {
        InputError::BadFeatures(format!("superpixel segmentation failed: {why}")).into()
    };
    let (w, h) = (width as usize, height as usize);
    let pixels = w.checked_mul(h).ok_or_else(|| refuse("the image is too large"))?;
    if rgb.len() != pixels.saturating_mul(3) {
        return Err(refuse("the buffer does not match the image's size"));
    }
    if k == 0 {
        return Err(refuse("Number of superpixels cannot be 0"));
    }
    if width == 0 || height == 0 {
        return Err(refuse("Image dimension cannot be 0"));
    }
    if u64::from(k) >= u64::from(width) * u64::from(height) {
        return Err(refuse("more superpixels asked than the image has pixels"));
    }
    let m = f64::from(m.clamp(1, 20));
    // S, the grid interval, truncated as the crate's `to_u32` does.
    let s = ((f64::from(width) * f64::from(height)) / f64::from(k)).sqrt() as u32;
    if s == 0 {
        return Err(refuse("Grid interval cannot be 0"));
    }
    let m_s = (m / f64::from(s)).powi(2);
    let image: Vec<Lab<D65, f64>> = rgb
        .chunks_exact(3)
        .map(|c| Lab::from_color(Srgb::new(c[0], c[1], c[2]).into_format::<f64>()))
        .collect();
    check()?;
    let mut clusters: Vec<Superpixel<Lab<D65, f64>>> = Vec::new();
    init_seeds(width, height, s, k, &image, &mut clusters).map_err(|e| refuse(&e.to_string()))?;
    for seed in &mut clusters {
        perturb(seed, i64::from(width), i64::from(height), &image).map_err(|e| refuse(&e.to_string()))?;
    }
    let mut distances = vec![f64::INFINITY; pixels];
    let mut labels = vec![0usize; pixels];
    // Per cluster: colour sum, x sum, y sum, pixel count.
    let mut updates = vec![(Lab::<D65, f64>::default(), 0f64, 0f64, 0f64); clusters.len()];
    for _ in 0..ITERATIONS {
        // Each centre claims the pixels of its 2S x 2S window that lie nearer to it.
        for (band, chunk) in clusters.chunks(CLUSTERS_PER_CHECK).enumerate() {
            check()?;
            for (offset, center) in chunk.iter().enumerate() {
                let index = band * CLUSTERS_PER_CHECK + offset;
                let x_range = center.x.saturating_sub(s)..center.x.saturating_add(s).min(width);
                for y in center.y.saturating_sub(s)..center.y.saturating_add(s).min(height) {
                    for x in x_range.clone() {
                        let i = y as usize * w + x as usize;
                        let color = image[i];
                        // The crate's distance_lab(color, centre) + m_s * distance_xy, term for term.
                        let d_lab = (center.data.l - color.l).powi(2)
                            + (center.data.a - color.a).powi(2)
                            + (center.data.b - color.b).powi(2);
                        let d_xy =
                            (f64::from(center.x) - f64::from(x)).powi(2) + (f64::from(center.y) - f64::from(y)).powi(2);
                        let distance = d_lab + m_s * d_xy;
                        if distance < distances[i] {
                            distances[i] = distance;
                            labels[i] = index;
                        }
                    }
                }
            }
        }
        check()?;
        // New centres: the means of the pixels each claimed.
        for (y, (row, row_labels)) in image.chunks_exact(w).zip(labels.chunks_exact(w)).enumerate() {
            for (x, (&color, &label)) in row.iter().zip(row_labels).enumerate() {
                if let Some(u) = updates.get_mut(label) {
                    u.0 += color;
                    u.1 += x as f64;
                    u.2 += y as f64;
                    u.3 += 1.0;
                }
            }
        }
        for (u, center) in updates.iter_mut().zip(&mut clusters) {
            if u.3 == 0.0 {
                continue;
            }
            center.data = u.0 / u.3;
            center.x = (u.1 / u.3) as u32;
            center.y = (u.2 / u.3) as u32;
            *u = (Lab::default(), 0.0, 0.0, 0.0);
        }
    }
    enforce_connectivity(w, h, s, &mut labels, check)?;
    Ok(labels)
}

/// The crate's `enforce_connectivity`: each connected piece of a label gets its own label, and a
/// piece of at most a quarter of S x S pixels takes the label of a neighbour found before it.
fn enforce_connectivity(w: usize, h: usize, s: u32, labels: &mut [usize], check: &Check) -> Result<(), RuntimeError> {
    let at = |x: i64, y: i64| -> Option<usize> {
        ((0..w as i64).contains(&x) && (0..h as i64).contains(&y)).then(|| y as usize * w + x as usize)
    };
    let threshold = (u64::from(s).pow(2) / 4) as usize;
    let mut new_labels = vec![usize::MAX; labels.len()];
    let mut queue: Vec<(i64, i64)> = Vec::new();
    // West, north, east, south, as the crate visits them.
    let neighbours = [(-1i64, 0i64), (0, -1), (1, 0), (0, 1)];
    let mut neighbour_label = 0;
    let mut new_label = 0usize;
    for y in 0..h {
        check()?;
        for x in 0..w {
            let i = y * w + x;
            if new_labels[i] != usize::MAX {
                continue;
            }
            let old_label = labels[i];
            new_labels[i] = new_label;
            for (dx, dy) in neighbours {
                if let Some(n) = at(x as i64 + dx, y as i64 + dy) {
                    if new_labels[n] != usize::MAX {
                        neighbour_label = new_labels[n];
                    }
                }
            }
            queue.clear();
            queue.push((x as i64, y as i64));
            let mut next = 0;
            while next < queue.len() {
                let (qx, qy) = queue[next];
                for (dx, dy) in neighbours {
                    let (vx, vy) = (qx + dx, qy + dy);
                    if let Some(n) = at(vx, vy) {
                        if labels[n] == old_label && new_labels[n] == usize::MAX {
                            queue.push((vx, vy));
                            new_labels[n] = new_label;
                        }
                    }
                }
                next += 1;
            }
            if queue.len() <= threshold {
                for &(qx, qy) in &queue {
                    if let Some(n) = at(qx, qy) {
                        new_labels[n] = neighbour_label;
                    }
                }
                continue;
            }
            new_label += 1;
        }
    }
    labels.copy_from_slice(&new_labels);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture with edges and noise, so that seeds move and pieces get merged.
    fn picture(w: usize, h: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = (state >> 59) as u8;
                let disc = ((x as i64 - 40).pow(2) + (y as i64 - 30).pow(2)) < 400;
                let base = if disc {
                    [200, 40, 40]
                } else {
                    [(x * 3) as u8, (y * 2) as u8, 90]
                };
                out.extend(base.iter().map(|b| b.wrapping_add(noise)));
            }
        }
        out
    }

    #[test]
    fn the_segments_are_the_crates_own() {
        for (w, h, k, m, seed) in [
            (96, 64, 50, 10, 1),
            (64, 64, 7, 1, 2),
            (33, 75, 120, 20, 3),
            (28, 28, 50, 10, 4),
        ] {
            let rgb = picture(w, h, seed);
            let ours = slic(k, m, w as u32, h as u32, &rgb, &|| Ok(())).unwrap();
            let theirs = simple_clustering::slic_from_bytes(k, m, w as u32, h as u32, None, &rgb).unwrap();
            assert_eq!(ours, theirs, "{w}x{h}, k = {k}, m = {m}");
        }
    }

    #[test]
    fn a_cancelled_job_stops_it() {
        let rgb = picture(96, 64, 1);
        let stop = || Err(RuntimeError::Cancelled);
        assert!(matches!(
            slic(50, 10, 96, 64, &rgb, &stop),
            Err(RuntimeError::Cancelled)
        ));
        assert!(slic(0, 10, 96, 64, &rgb, &|| Ok(())).is_err());
        assert!(slic(96 * 64, 10, 96, 64, &rgb, &|| Ok(())).is_err());
    }
}
