//! User inputs to model tensors: decoding and resizing images, ordering tabular features.

use std::io::Cursor;

use image::{DynamicImage, ImageReader};

use super::manifest::{ColorOrder, Fit, ImageSpec, Layout, ResizeFilter, TabularSpec};
use super::tensor::Tensor;
use crate::pixels::resample;
pub use crate::pixels::Geometry;

/// An input that does not fit the model or the service's limits.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The bytes are not a PNG or JPEG image, or are corrupt.
    #[error("{0}")]
    BadImage(String),
    /// The image has more pixels than `max_image_pixels`.
    #[error("image is {width}x{height} = {pixels} pixels; the limit is {limit} pixels")]
    ImageTooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    /// Tabular features are missing, unknown, or not numbers.
    #[error("{0}")]
    BadFeatures(String),
    /// The input kind does not match the model's task.
    #[error("{0}")]
    WrongKind(String),
    /// The text is empty or the tokenizer refuses it.
    #[error("{0}")]
    BadText(String),
    /// The text has more bytes than `max_text_bytes`.
    #[error("the text is {bytes} bytes of UTF-8; the limit is {limit} bytes (max_text_bytes)")]
    TextTooLong { bytes: usize, limit: usize },
}

/// A decoded image, ready for the model.
pub struct PreparedImage {
    /// The original image, as decoded (RGB).
    pub original: image::RgbImage,
    /// Model input tensor `[1, ...]`.
    pub tensor: Tensor,
    /// How the tensor maps onto the original.
    pub geometry: Geometry,
}

/// Decodes PNG or JPEG bytes, refusing images over `max_pixels` before decoding them.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, InputError> {
    let open = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| InputError::BadImage(format!("cannot read image: {e}")))
    };
    let reader = open()?;
    match reader.format() {
        Some(image::ImageFormat::Png) | Some(image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(InputError::BadImage(format!(
                "{other:?} images are not accepted; send PNG or JPEG"
            )));
        }
        None => return Err(InputError::BadImage("the body is not a PNG or JPEG image".into())),
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| InputError::BadImage(format!("corrupt image header: {e}")))?;
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(InputError::ImageTooLarge {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // 16-bit RGBA is the widest form a PNG decodes to.
    limits.max_alloc = Some(pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| InputError::BadImage(format!("corrupt image: {e}")))
}

/// Resizes and normalises an image into the model's input tensor.
pub fn prepare_image(img: &DynamicImage, spec: &ImageSpec) -> PreparedImage {
    let original = img.to_rgb8();
    let (ow, oh) = original.dimensions();
    let (tw, th) = (spec.width as u32, spec.height as u32);
    let filter = match spec.resize {
        ResizeFilter::Bilinear => resample::Filter::Bilinear,
        ResizeFilter::Nearest => resample::Filter::Nearest,
    };
    let (crop_x, crop_y, crop_w, crop_h) = match spec.fit {
        Fit::Letterbox | Fit::LetterboxTopLeft => {
            let anchor = match spec.fit {
                Fit::LetterboxTopLeft => crate::pixels::Anchor::TopLeft,
                _ => crate::pixels::Anchor::Centre,
            };
            let (boxed, geometry) = crate::pixels::letterbox(&original, (tw, th), anchor, spec.pad, filter);
            return PreparedImage {
                tensor: normalise(&boxed, spec),
                original,
                geometry,
            };
        }
        Fit::Stretch => (0.0, 0.0, ow as f32, oh as f32),
        Fit::CenterCrop => {
            // The largest centred region of the target's aspect ratio.
            let target_ratio = tw as f32 / th as f32;
            let (cw, ch) = if ow as f32 / oh as f32 > target_ratio {
                (oh as f32 * target_ratio, oh as f32)
            } else {
                (ow as f32, ow as f32 / target_ratio)
            };
            ((ow as f32 - cw) / 2.0, (oh as f32 - ch) / 2.0, cw, ch)
        }
    };
    let region = (
        crop_x.round() as u32,
        crop_y.round() as u32,
        (crop_w.round() as u32).max(1),
        (crop_h.round() as u32).max(1),
    );
    let resized = resample::rgb(&original, region, tw, th, filter);
    PreparedImage {
        tensor: normalise(&resized, spec),
        original,
        geometry: Geometry {
            original_width: ow,
            original_height: oh,
            crop_x,
            crop_y,
            crop_width: crop_w,
            crop_height: crop_h,
        },
    }
}

/// An image of the input's size as the model's normalised `[1, ...]` tensor.
fn normalise(resized: &image::RgbImage, spec: &ImageSpec) -> Tensor {
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let mut data = vec![0f32; c * h * w];
    for (x, y, px) in resized.enumerate_pixels() {
        let [r, g, b] = px.0;
        let channels: [f32; 3] = match spec.color {
            ColorOrder::Rgb => [r as f32, g as f32, b as f32],
            ColorOrder::Bgr => [b as f32, g as f32, r as f32],
            // ITU-R 601 luma, as image's to_luma8 uses.
            ColorOrder::Grayscale => [0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32, 0.0, 0.0],
        };
        let (x, y) = (x as usize, y as usize);
        for (ch, value) in channels.iter().enumerate().take(c) {
            let v = (value * spec.scale - spec.mean[ch]) / spec.std[ch];
            let idx = match spec.layout {
                Layout::NCHW => ch * h * w + y * w + x,
                Layout::NHWC => (y * w + x) * c + ch,
            };
            data[idx] = v;
        }
    }
    let shape = match spec.layout {
        Layout::NCHW => vec![1, c, h, w],
        Layout::NHWC => vec![1, h, w, c],
    };
    Tensor::f32(shape, data)
}

/// Tabular features as sent: by name, or in input order.
#[derive(Debug, Clone)]
pub enum Features {
    /// `{"name": value, ...}`.
    Named(serde_json::Map<String, serde_json::Value>),
    /// `[value, ...]` in the manifest's feature order.
    Ordered(Vec<serde_json::Value>),
}

/// Orders and checks features into a `[1, n]` tensor: each a number its feature's type holds (a
/// whole number for an integer feature or input, one of its categories for a categorical one).
pub fn prepare_features(features: &Features, spec: &TabularSpec) -> Result<Tensor, InputError> {
    let n = spec.features.len();
    let number = |(i, name): (usize, &String), v: &serde_json::Value| -> Result<f32, InputError> {
        let x = v
            .as_f64()
            .ok_or_else(|| InputError::BadFeatures(format!("feature `{name}` must be a number, got {v}")))?;
        if let Some(why) = spec.feature_types.get(i).and_then(|t| t.refuses(x, spec.range)) {
            return Err(InputError::BadFeatures(format!("feature `{name}`: {why}")));
        }
        let x = x as f32;
        if !x.is_finite() {
            return Err(InputError::BadFeatures(format!(
                "feature `{name}` is out of float32 range"
            )));
        }
        Ok(x)
    };
    let is_block = |k: &String| spec.blocks.iter().any(|b| &b.name == k);
    let values = match features {
        // Several explained inputs, each its own array: `{"a": [...], "b": [...]}`.
        Features::Named(map) if map.keys().any(is_block) => {
            let names = || {
                let named: Vec<String> = spec.blocks.iter().map(|b| format!("`{}`", b.name)).collect();
                named.join(", ")
            };
            if let Some(unknown) = map.keys().find(|k| !is_block(k)) {
                return Err(InputError::BadFeatures(format!(
                    "unknown input `{unknown}`: the explained inputs are {}",
                    names()
                )));
            }
            let mut values = Vec::with_capacity(n);
            for b in &spec.blocks {
                let given = map.get(&b.name).ok_or_else(|| {
                    InputError::BadFeatures(format!(
                        "missing explained input `{}` ({} values; the explained inputs are {})",
                        b.name,
                        b.len,
                        names()
                    ))
                })?;
                let row = given.as_array().filter(|row| row.len() == b.len).ok_or_else(|| {
                    InputError::BadFeatures(format!(
                        "input `{}` takes [{}] (an array of {} numbers), got {}",
                        b.name,
                        b.len,
                        b.len,
                        given
                            .as_array()
                            .map_or("no array".to_string(), |r| format!("{} values", r.len()))
                    ))
                })?;
                for ((i, name), v) in spec.features.iter().enumerate().skip(b.start).zip(row) {
                    values.push(number((i, name), v)?);
                }
            }
            values
        }
        Features::Ordered(values) => {
            if values.len() != n {
                let blocks: Vec<String> = spec
                    .blocks
                    .iter()
                    .map(|b| format!("{} of input `{}`", b.len, b.name))
                    .collect();
                let blocks = match blocks.is_empty() {
                    true => String::new(),
                    false => format!(" ({})", blocks.join(", then ")),
                };
                return Err(InputError::BadFeatures(format!(
                    "expected {n} feature values{blocks} in this order: {}; got {}",
                    spec.features.join(", "),
                    values.len()
                )));
            }
            values
                .iter()
                .zip(spec.features.iter().enumerate())
                .map(|(v, name)| number(name, v))
                .collect::<Result<Vec<_>, _>>()?
        }
        Features::Named(map) => {
            let unknown: Vec<&str> = map
                .keys()
                .filter(|k| !spec.features.contains(k))
                .map(String::as_str)
                .collect();
            let missing: Vec<&str> = spec
                .features
                .iter()
                .filter(|f| !map.contains_key(*f))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() || !missing.is_empty() {
                let mut parts = Vec::new();
                if !unknown.is_empty() {
                    parts.push(format!("unknown feature(s): {}", unknown.join(", ")));
                }
                if !missing.is_empty() {
                    parts.push(format!("missing feature(s): {}", missing.join(", ")));
                }
                return Err(InputError::BadFeatures(parts.join("; ")));
            }
            spec.features
                .iter()
                .enumerate()
                .map(|(i, name)| number((i, name), &map[name]))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(Tensor::f32(vec![1, n], values))
}

/// The shape of one row of the tensor explaind feeds a model (without the batch axis): an image
/// model's `[C, H, W]` or `[H, W, C]`, a tabular model's `[features]`; none for text models, which
/// take text.
pub fn row_shape(spec: &super::manifest::ModelSpec) -> Option<Vec<usize>> {
    if let Some(image) = &spec.image {
        return Some(match image.layout {
            Layout::NCHW => vec![image.channels, image.height, image.width],
            Layout::NHWC => vec![image.height, image.width, image.channels],
        });
    }
    spec.tabular.as_ref().map(|t| vec![t.features.len()])
}

/// One row of a tensor sent as it is (the Open Inference Protocol's tensors, raw model input):
/// checked against the row the model takes ([`row_shape`]) and for finite values, as one
/// `[1, ...]` tensor.
pub fn prepare_row(spec: &super::manifest::ModelSpec, values: Vec<f32>) -> Result<Tensor, InputError> {
    let shape = row_shape(spec)
        .ok_or_else(|| InputError::WrongKind("a text model takes text, not a tensor of numbers".into()))?;
    let want: usize = shape.iter().product();
    if values.len() != want {
        return Err(InputError::BadFeatures(format!(
            "a row of {} values does not fit the model's input row {shape:?} ({want} values)",
            values.len()
        )));
    }
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        return Err(InputError::BadFeatures(format!(
            "value {at} of the row is not a finite float32"
        )));
    }
    let mut full = Vec::with_capacity(shape.len() + 1);
    full.push(1);
    full.extend(shape);
    Ok(Tensor::f32(full, values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::manifest::FeatureType;

    #[test]
    fn a_map_over_the_original_comes_onto_the_models_grid_through_the_crop() {
        // A 20x10 original whose centre 10x10 became a 5x5 input; the map is 1 inside the crop.
        let geometry = Geometry {
            original_width: 20,
            original_height: 10,
            crop_x: 5.0,
            crop_y: 0.0,
            crop_width: 10.0,
            crop_height: 10.0,
        };
        let map: Vec<f32> = (0..200)
            .map(|i| if (5..15).contains(&(i % 20)) { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(geometry.map_forward(&map, 5, 5), vec![1.0; 25]);
        let ramp: Vec<f32> = (0..200).map(|i| (i % 20) as f32).collect();
        let forward = geometry.map_forward(&ramp, 5, 5);
        assert_eq!(
            &forward[..5],
            &[5.5, 7.5, 9.5, 11.5, 13.5],
            "each the mean of its two columns"
        );
    }

    fn spec() -> ImageSpec {
        ImageSpec {
            layout: Layout::NCHW,
            width: 4,
            height: 2,
            channels: 3,
            color: ColorOrder::Rgb,
            resize: ResizeFilter::Nearest,
            fit: Fit::CenterCrop,
            pad: 0,
            scale: 1.0,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        }
    }

    #[test]
    fn center_crop_takes_the_middle() {
        // 8x8 image whose middle rows are red; a 4:2 crop keeps rows 2..6.
        let mut img = image::RgbImage::new(8, 8);
        for (_, y, p) in img.enumerate_pixels_mut() {
            *p = if (2..6).contains(&y) {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            };
        }
        let prepared = prepare_image(&DynamicImage::ImageRgb8(img), &spec());
        assert_eq!(prepared.geometry.crop_y, 2.0);
        assert_eq!(prepared.geometry.crop_height, 4.0);
        let red = &prepared.tensor.as_f32().unwrap()[0..8];
        assert!(red.iter().all(|&v| v == 255.0), "{red:?}");
    }

    #[test]
    fn features_by_name_name_the_unknown_and_missing() {
        let spec = TabularSpec {
            features: vec!["a".into(), "b".into()],
            background: None,
            constraints: Default::default(),
            types: Default::default(),
            feature_types: vec![FeatureType::Continuous, FeatureType::Integer],
            range: None,
            descriptions: Default::default(),
            blocks: Vec::new(),
        };
        let map = serde_json::json!({"a": 1.0, "c": 2.0}).as_object().unwrap().clone();
        let err = prepare_features(&Features::Named(map), &spec).unwrap_err().to_string();
        assert!(
            err.contains("unknown feature(s): c") && err.contains("missing feature(s): b"),
            "{err}"
        );
    }

    #[test]
    fn oversized_image_is_refused_before_decoding() {
        let img = image::RgbImage::new(100, 100);
        let mut png = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(matches!(
            decode_image(&png, 50 * 50),
            Err(InputError::ImageTooLarge { pixels: 10_000, .. })
        ));
        assert!(decode_image(&png, 100 * 100).is_ok());
        assert!(matches!(
            decode_image(&png[..40], 100 * 100),
            Err(InputError::BadImage(_))
        ));
    }
}
