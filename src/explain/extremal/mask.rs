//! Extremal perturbations' mask: TorchRay's smooth-max generator over a coarse parameter grid,
//! and its gradient.

/// Sharpness of the smooth max that merges the mask's bumps.
const COLDNESS: f32 = 20.0;

/// TorchRay's mask generator: parameters on a grid `step` pixels apart; each output pixel takes a
/// smooth max (softmax pooling, coldness 20) of the nearby parameters times Gaussian-like bumps
/// `exp(-2 max(d / sigma - 0.5, 0)^2)`; the mask has a margin of `sigma` pixels around the image,
/// which the area penalty counts and the image crops.
pub(super) struct MaskGrid {
    pub(super) step: usize,
    pub(super) sigma: f32,
    margin: usize,
    padding: i64,
    radius: i64,
    shape_in: (usize, usize),
    shape_out: (usize, usize),
    /// Bump weights by (row offset within a step, column offset, window row, window column).
    bumps: Vec<f32>,
}

/// A generated mask with what its gradient needs.
pub(super) struct FullMask {
    /// Clamped to [0, 1] (what the image and the penalty see).
    pub(super) clamped: Vec<f32>,
    /// Before clamping (the clamp passes gradients only inside [0, 1]).
    pooled: Vec<f32>,
    /// Each cell's softmax weights over its window (the gradient reuses them: no exponentials).
    weights: Vec<f32>,
}

impl MaskGrid {
    pub(super) fn new(h: usize, w: usize, step: usize, sigma: f32) -> Self {
        let step = step.max(1);
        let s = step as f64;
        let margin = f64::from(sigma);
        let padding = 1 + ((margin + f64::from(sigma)) / s).ceil() as i64;
        let radius = 1 + (f64::from(sigma) / s).ceil() as i64;
        let shape_in = (h.div_ceil(step), w.div_ceil(step));
        let mid = |z: usize| (z as i64 + 2 * padding - 2 * radius).max(1) as usize;
        let shape_out = (mid(shape_in.0) * step - step + 1, mid(shape_in.1) * step - step + 1);
        let window = (2 * radius + 1) as usize;
        let mut bumps = vec![0f32; step * step * window * window];
        for ry in 0..step {
            for rx in 0..step {
                for ky in 0..window {
                    for kx in 0..window {
                        // Offset of the pixel from parameter (ky, kx)'s centre.
                        let dy = ry as f64 - margin + s * (padding - ky as i64) as f64;
                        let dx = rx as f64 - margin + s * (padding - kx as i64) as f64;
                        let z = (dy * dy + dx * dx).sqrt() / f64::from(sigma);
                        let e = (z - 0.5).max(0.0);
                        bumps[((ry * step + rx) * window + ky) * window + kx] = (-2.0 * e * e).exp() as f32;
                    }
                }
            }
        }
        Self {
            step,
            sigma,
            margin: margin.round() as usize,
            padding,
            radius,
            shape_in,
            shape_out,
            bumps,
        }
    }

    pub(super) fn params(&self) -> usize {
        self.shape_in.0 * self.shape_in.1
    }

    pub(super) fn cells(&self) -> usize {
        self.shape_out.0 * self.shape_out.1
    }

    pub(super) fn window(&self) -> usize {
        (2 * self.radius + 1) as usize
    }

    /// Calls `f(k, parameter index, bump weight)` for each window entry of output pixel (uy, ux);
    /// entries outside the grid have no parameter (their value is 0).
    fn entries(&self, uy: usize, ux: usize, mut f: impl FnMut(usize, Option<usize>, f32)) {
        let window = self.window();
        let (by, bx) = ((uy / self.step) as i64, (ux / self.step) as i64);
        let base = ((uy % self.step) * self.step + ux % self.step) * window * window;
        for ky in 0..window {
            let iy = by + ky as i64 - self.padding;
            for kx in 0..window {
                let ix = bx + kx as i64 - self.padding;
                let inside = iy >= 0 && ix >= 0 && (iy as usize) < self.shape_in.0 && (ix as usize) < self.shape_in.1;
                let param = inside.then(|| iy as usize * self.shape_in.1 + ix as usize);
                f(ky * window + kx, param, self.bumps[base + ky * window + kx]);
            }
        }
    }

    /// The full mask (with its margin) for `params`.
    pub(super) fn generate(&self, params: &[f32]) -> FullMask {
        let n = self.window() * self.window();
        let mut values = vec![0f32; n];
        let mut pooled = vec![0f32; self.cells()];
        let mut weights = vec![0f32; self.cells() * n];
        for uy in 0..self.shape_out.0 {
            for ux in 0..self.shape_out.1 {
                self.entries(uy, ux, |k, param, bump| {
                    values[k] = param.map_or(0.0, |i| bump * params[i]);
                });
                let cell = uy * self.shape_out.1 + ux;
                pooled[cell] = smooth_max(&values, &mut weights[cell * n..(cell + 1) * n]);
            }
        }
        let clamped = pooled.iter().map(|v| v.clamp(0.0, 1.0)).collect();
        FullMask {
            clamped,
            pooled,
            weights,
        }
    }

    /// The gradient with respect to the parameters of a loss whose gradient with respect to the
    /// full (clamped) mask is `d_full`.
    pub(super) fn backward(&self, params: &[f32], full: &FullMask, d_full: &[f32]) -> Vec<f32> {
        let n = self.window() * self.window();
        let mut values = vec![0f32; n];
        let mut d_params = vec![0f32; params.len()];
        for uy in 0..self.shape_out.0 {
            for ux in 0..self.shape_out.1 {
                let cell = uy * self.shape_out.1 + ux;
                let pooled = full.pooled[cell];
                if d_full[cell] == 0.0 || !(0.0..=1.0).contains(&pooled) {
                    continue;
                }
                self.entries(uy, ux, |k, param, bump| {
                    values[k] = param.map_or(0.0, |i| bump * params[i]);
                });
                let weights = &full.weights[cell * n..(cell + 1) * n];
                let g = d_full[cell];
                self.entries(uy, ux, |k, param, bump| {
                    if let Some(i) = param {
                        // d pooled / d v_k = s_k (1 + c (v_k - pooled)); d v_k / d param = bump.
                        d_params[i] += g * weights[k] * (1.0 + COLDNESS * (values[k] - pooled)) * bump;
                    }
                });
            }
        }
        d_params
    }

    /// The image's part of a full mask.
    pub(super) fn crop(&self, full: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut out = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = (y + self.margin, x + self.margin);
                if fy < self.shape_out.0 && fx < self.shape_out.1 {
                    out[y * w + x] = full[fy * self.shape_out.1 + fx];
                }
            }
        }
        out
    }

    /// A gradient on the image's part, placed in the full mask (zero on the margin).
    pub(super) fn uncrop(&self, image: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cells()];
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = (y + self.margin, x + self.margin);
                if fy < self.shape_out.0 && fx < self.shape_out.1 {
                    out[fy * self.shape_out.1 + fx] = image[y * w + x];
                }
            }
        }
        out
    }
}

/// `sum_k v_k softmax(c v)_k`, writing the softmax weights to `weights`.
fn smooth_max(values: &[f32], weights: &mut [f32]) -> f32 {
    let top = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (w, v) in weights.iter_mut().zip(values) {
        *w = COLDNESS * (v - top);
    }
    // The mask's exponentials are most of an iteration's own work: 81 per mask pixel at the
    // defaults. A polynomial the compiler vectorises, in place of one libm call each.
    exp_in_place(weights);
    let total: f32 = weights.iter().sum();
    let mut pooled = 0f32;
    for (w, v) in weights.iter_mut().zip(values) {
        *w /= total;
        pooled += *w * v;
    }
    pooled
}

/// `e^x` of each value, for `x` at most 0 (the smooth max's exponents; below -87 the result is
/// 0), within about 2e-7 relative: `2^n * e^r` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`, `e^r` by
/// its degree-6 Taylor polynomial and `2^n` written into the float's exponent. Branch-free, so the
/// loop runs several values per instruction.
fn exp_in_place(values: &mut [f32]) {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN_2_HI: f32 = 0.693_145_75;
    const LN_2_LO: f32 = 1.428_606_8e-6;
    const ROUNDER: f32 = 12_582_912.0; // 1.5 * 2^23
    for v in values.iter_mut() {
        let x = v.clamp(-87.0, 0.0);
        // Rounded to the nearest integer by the float addition itself (`round` is a library
        // call on baseline x86-64, which would stop the vectorisation).
        let n = (x * LOG2_E + ROUNDER) - ROUNDER;
        let r = x - n * LN_2_HI - n * LN_2_LO;
        let p =
            1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        // n is in -126..=0 here, so the biased exponent stays a normal float's.
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        *v = p * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask generator's gradient against central differences of its output.
    #[test]
    fn the_mask_gradient_matches_finite_differences() {
        let grid = MaskGrid::new(9, 7, 2, 3.0);
        let params: Vec<f32> = (0..grid.params())
            .map(|i| 0.2 + 0.6 * ((i * 37) % 11) as f32 / 11.0)
            .collect();
        let probe: Vec<f32> = (0..grid.cells()).map(|i| ((i * 13) % 7) as f32 / 7.0 - 0.4).collect();
        let loss = |p: &[f32]| -> f64 {
            let full = grid.generate(p);
            full.clamped.iter().zip(&probe).map(|(m, w)| f64::from(m * w)).sum()
        };
        let full = grid.generate(&params);
        let d = grid.backward(&params, &full, &probe);
        for i in (0..params.len()).step_by(3) {
            let h = 1e-3;
            let (mut up, mut down) = (params.clone(), params.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * f64::from(h));
            assert!(
                (numeric - f64::from(d[i])).abs() < 2e-2 * numeric.abs().max(1.0),
                "parameter {i}: {numeric} vs {}",
                d[i]
            );
        }
    }

    /// The vectorised exponential against the standard library's, over the smooth max's range.
    #[test]
    fn the_polynomial_exponential_matches_the_standard_one() {
        let xs: Vec<f32> = (0..=40_000)
            .map(|i| -(i as f32) * 0.0025)
            .chain([-87.0, -200.0, 0.0])
            .collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            let want = x.max(-87.0).exp();
            assert!((y - want).abs() <= 4e-7 * want, "exp({x}) = {y}, want {want}");
        }
    }

    /// TorchRay's sizes for a 224 x 224 image at step 7, sigma 21.
    #[test]
    fn the_grid_has_torchrays_shapes_on_imagenet_inputs() {
        let grid = MaskGrid::new(224, 224, 7, 21.0);
        assert_eq!(grid.shape_in, (32, 32));
        assert_eq!((grid.padding, grid.radius), (7, 4));
        // shape_mid = 32 + 14 - 9 + 1 = 38; up 266; out 260.
        assert_eq!(grid.shape_out, (260, 260));
        assert_eq!(grid.margin, 21);
    }
}
