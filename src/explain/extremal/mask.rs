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
#[derive(Default)]
pub(super) struct FullMask {
    /// Clamped to [0, 1] (what the image and the penalty see).
    pub(super) clamped: Vec<f32>,
    /// Before clamping (the clamp passes gradients only inside [0, 1]).
    pooled: Vec<f32>,
    /// Each cell's softmax weights over its window (the gradient reuses them: no exponentials).
    weights: Vec<f32>,
    /// The parameters in their zero-padded grid ([`MaskGrid::pad`]).
    padded: Vec<f32>,
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

    /// Rows and columns of the zero-padded parameter grid: every window entry of every output
    /// pixel lands inside it, so the loops below index it without bounds tests or branches.
    fn padded_shape(&self) -> (usize, usize) {
        let window = self.window();
        let pad = self.padding as usize;
        let rows = ((self.shape_out.0 - 1) / self.step + window).max(self.shape_in.0 + pad);
        let cols = ((self.shape_out.1 - 1) / self.step + window).max(self.shape_in.1 + pad);
        (rows, cols)
    }

    /// `params` placed in the padded grid (zeros around: window entries outside the grid have
    /// no parameter, their value is 0).
    fn pad(&self, params: &[f32]) -> Vec<f32> {
        let (rows, cols) = self.padded_shape();
        let pad = self.padding as usize;
        let mut padded = vec![0f32; rows * cols];
        for (iy, row) in params.chunks(self.shape_in.1).enumerate() {
            let at = (iy + pad) * cols + pad;
            padded[at..at + row.len()].copy_from_slice(row);
        }
        padded
    }

    /// The full mask (with its margin) for `params`.
    pub(super) fn generate(&self, params: &[f32]) -> FullMask {
        let mut full = FullMask::default();
        self.generate_into(params, &mut full);
        full
    }

    /// [`Self::generate`] into `full`, reusing its buffers: the weights are tens of megabytes at
    /// 224 x 224, which a fresh allocation every iteration would page in again.
    pub(super) fn generate_into(&self, params: &[f32], full: &mut FullMask) {
        let n = self.window() * self.window();
        full.padded = self.pad(params);
        full.pooled.resize(self.cells(), 0.0);
        full.weights.resize(self.cells() * n, 0.0);
        let FullMask {
            clamped,
            pooled,
            weights,
            padded,
        } = full;
        let mut values = vec![0f32; self.shape_out.1 * n];
        // Every value is a bump (at most 1) times a parameter, so none exceeds the largest
        // parameter: subtracting it instead of each pixel's own maximum leaves the softmax as it
        // is (a common factor) and its exponents at most 0, and saves a pass per pixel.
        let top = params.iter().copied().fold(0f32, f32::max);
        for uy in 0..self.shape_out.0 {
            let row = uy * self.shape_out.1..(uy + 1) * self.shape_out.1;
            kernels::generate_row(
                self,
                padded,
                uy,
                top,
                &mut values,
                &mut weights[row.start * n..row.end * n],
                &mut pooled[row],
            );
        }
        clamped.clear();
        clamped.extend(pooled.iter().map(|v| v.clamp(0.0, 1.0)));
    }

    /// The gradient with respect to the parameters of a loss whose gradient with respect to the
    /// full (clamped) mask is `d_full`.
    pub(super) fn backward(&self, params: &[f32], full: &FullMask, d_full: &[f32]) -> Vec<f32> {
        let (rows, cols) = self.padded_shape();
        let mut d_padded = vec![0f32; rows * cols];
        for uy in 0..self.shape_out.0 {
            kernels::backward_row(self, full, d_full, uy, &mut d_padded);
        }
        // Entries on the padding have no parameter: their gradient is dropped.
        let pad = self.padding as usize;
        let mut d_params = vec![0f32; params.len()];
        for (iy, row) in d_params.chunks_mut(self.shape_in.1).enumerate() {
            let at = (iy + pad) * cols + pad;
            row.copy_from_slice(&d_padded[at..at + row.len()]);
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

/// The mask's loops, compiled twice: for the baseline x86-64 (SSE2) and for AVX2 with FMA, taken
/// when the processor has them. They are most of an iteration's own work (81 exponentials per
/// mask pixel at the defaults), and eight lanes instead of four halve it.
mod kernels {
    use super::{FullMask, MaskGrid, COLDNESS};

    /// Row `uy` of the mask: each pixel's window values (bumps times the padded parameters),
    /// their softmax weights (`exp(c (v - top))`, normalised) into `weights` and the smooth max
    /// into `pooled`; `values` is scratch for the row.
    pub(super) fn generate_row(
        grid: &MaskGrid,
        padded: &[f32],
        uy: usize,
        top: f32,
        values: &mut [f32],
        weights: &mut [f32],
        pooled: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the processor has the features the function is compiled for (just detected).
            return unsafe { generate_row_avx2(grid, padded, uy, top, values, weights, pooled) };
        }
        generate_row_body(grid, padded, uy, top, values, weights, pooled)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn generate_row_avx2(
        grid: &MaskGrid,
        padded: &[f32],
        uy: usize,
        top: f32,
        values: &mut [f32],
        weights: &mut [f32],
        pooled: &mut [f32],
    ) {
        generate_row_body(grid, padded, uy, top, values, weights, pooled)
    }

    #[inline(always)]
    fn generate_row_body(
        grid: &MaskGrid,
        padded: &[f32],
        uy: usize,
        top: f32,
        values: &mut [f32],
        weights: &mut [f32],
        pooled: &mut [f32],
    ) {
        let window = grid.window();
        let n = window * window;
        let cols = grid.padded_shape().1;
        let (by, ry) = (uy / grid.step, uy % grid.step);
        for (ux, cell) in values.chunks_exact_mut(n).enumerate().take(pooled.len()) {
            let (bx, rx) = (ux / grid.step, ux % grid.step);
            let bumps = &grid.bumps[(ry * grid.step + rx) * n..][..n];
            for ky in 0..window {
                let params = &padded[(by + ky) * cols + bx..][..window];
                let (out, bump) = (&mut cell[ky * window..][..window], &bumps[ky * window..][..window]);
                for ((o, b), p) in out.iter_mut().zip(bump).zip(params) {
                    *o = b * p;
                }
            }
        }
        // The whole row's exponents at once: one long loop the compiler vectorises.
        let values = &values[..weights.len()];
        for (w, v) in weights.iter_mut().zip(values) {
            *w = COLDNESS * (v - top);
        }
        exp_in_place(weights);
        for ((w, v), out) in weights.chunks_exact_mut(n).zip(values.chunks_exact(n)).zip(pooled) {
            let total: f32 = w.iter().sum();
            let inv = 1.0 / total;
            let mut sum = 0f32;
            for (w, v) in w.iter_mut().zip(v) {
                *w *= inv;
                sum += *w * v;
            }
            *out = sum;
        }
    }

    /// Adds row `uy`'s share of the gradient with respect to the padded parameters to `d_padded`.
    pub(super) fn backward_row(grid: &MaskGrid, full: &FullMask, d_full: &[f32], uy: usize, d_padded: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the processor has the features the function is compiled for (just detected).
            return unsafe { backward_row_avx2(grid, full, d_full, uy, d_padded) };
        }
        backward_row_body(grid, full, d_full, uy, d_padded)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn backward_row_avx2(grid: &MaskGrid, full: &FullMask, d_full: &[f32], uy: usize, d_padded: &mut [f32]) {
        backward_row_body(grid, full, d_full, uy, d_padded)
    }

    #[inline(always)]
    fn backward_row_body(grid: &MaskGrid, full: &FullMask, d_full: &[f32], uy: usize, d_padded: &mut [f32]) {
        let window = grid.window();
        let n = window * window;
        let (width, cols) = (grid.shape_out.1, grid.padded_shape().1);
        let (by, ry) = (uy / grid.step, uy % grid.step);
        for ux in 0..width {
            let cell = uy * width + ux;
            let (g, pooled) = (d_full[cell], full.pooled[cell]);
            if g == 0.0 || !(0.0..=1.0).contains(&pooled) {
                continue;
            }
            let (bx, rx) = (ux / grid.step, ux % grid.step);
            let bumps = &grid.bumps[(ry * grid.step + rx) * n..][..n];
            let weights = &full.weights[cell * n..][..n];
            for ky in 0..window {
                let at = (by + ky) * cols + bx;
                let params = &full.padded[at..][..window];
                let d = &mut d_padded[at..][..window];
                let (bump, weight) = (&bumps[ky * window..][..window], &weights[ky * window..][..window]);
                for (((d, p), b), w) in d.iter_mut().zip(params).zip(bump).zip(weight) {
                    // d pooled / d v_k = s_k (1 + c (v_k - pooled)); d v_k / d param = bump.
                    *d += g * w * (1.0 + COLDNESS * (b * p - pooled)) * b;
                }
            }
        }
    }

    /// `e^x` of each value, for `x` at most 0 (the smooth max's exponents; below -87 the result
    /// is 0), within about 2e-7 relative: `2^n * e^r` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`,
    /// `e^r` by its degree-6 Taylor polynomial and `2^n` written into the float's exponent.
    /// Branch-free, so the loop runs several values per instruction.
    #[inline(always)]
    pub(super) fn exp_in_place(values: &mut [f32]) {
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
            let p = 1.0
                + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
            // n is in -126..=0 here, so the biased exponent stays a normal float's.
            let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
            *v = p * scale;
        }
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
        kernels::exp_in_place(&mut ys);
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
