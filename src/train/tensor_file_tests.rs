//! safetensors files written and read against safetensors' own encoder and by hand: names,
//! shapes, values, dtypes, torn files, the header's bytes; flat tensors and fingerprints.

use super::*;

#[test]
fn round_trip_keeps_names_shapes_values_and_metadata() {
    let dir = std::env::temp_dir().join(format!("lowrank-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.safetensors");
    let ts = vec![
        HostTensor {
            name: "a.weight".into(),
            shape: vec![2, 3],
            data: vec![1.0, -2.0, 3.5, 0.0, 1e-8, f32::MAX],
        },
        HostTensor {
            name: "b".into(),
            shape: vec![1],
            data: vec![7.0],
        },
    ];
    let meta = HashMap::from([("step".to_string(), "12".to_string())]);
    save(&p, &ts, meta.clone()).unwrap();
    let (back, m) = load(&p).unwrap();
    assert_eq!(back, ts);
    assert_eq!(m, meta);
    let bad = vec![HostTensor {
        name: "x".into(),
        shape: vec![2],
        data: vec![1.0],
    }];
    assert!(save(&p, &bad, HashMap::new()).is_err());
    std::fs::write(&p, b"not a checkpoint").unwrap();
    let e = load(&p).unwrap_err();
    assert!(format!("{e:#}").contains("not a safetensors file"), "{e:#}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A tensor in any dtype, as bytes, for safetensors' own encoder.
struct RawView(Dtype, Vec<usize>, Vec<u8>);

impl safetensors::View for &RawView {
    fn dtype(&self) -> Dtype {
        self.0
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.2)
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

/// A file safetensors' own encoder wrote with f32, bf16 and f16 tensors side by side (each
/// read at its own offset) loads as their f32 values; one cut short is refused.
#[test]
fn mixed_dtypes_load_as_f32_and_a_truncated_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("lowrank-st-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.safetensors");
    let values = [1.5f32, -0.25, 3.0, 1024.0, -7.5];
    let f32s: Vec<u8> = bytemuck::cast_slice(&values[..3]).to_vec();
    let bf16s: Vec<half::bf16> = values.iter().map(|&x| half::bf16::from_f32(x)).collect();
    let f16s: Vec<half::f16> = values[1..]
        .iter()
        .map(|&x| half::f16::from_f32(x))
        .collect();
    let views = [
        ("a", RawView(Dtype::F32, vec![3], f32s)),
        (
            "b",
            RawView(Dtype::BF16, vec![5], bytemuck::cast_slice(&bf16s).to_vec()),
        ),
        (
            "c",
            RawView(Dtype::F16, vec![2, 2], bytemuck::cast_slice(&f16s).to_vec()),
        ),
    ];
    let bytes = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), None).unwrap();
    std::fs::write(&p, &bytes).unwrap();
    let (back, _) = load(&p).unwrap();
    let got: Vec<(&str, &[usize], &[f32])> = (back.iter())
        .map(|t| (t.name.as_str(), &t.shape[..], &t.data[..]))
        .collect();
    let want: [(&str, &[usize], &[f32]); 3] = [
        ("a", &[3], &values[..3]),
        ("b", &[5], &values[..]),
        ("c", &[2, 2], &values[1..]),
    ];
    assert_eq!(got, want);
    // A bf16 tensor longer than `read_widened`'s chunk, each value its own (exact in bf16).
    let long: Vec<f32> = (0..(1 << 20) + 5)
        .map(|i| (i % 251) as f32 - 125.0)
        .collect();
    let long_bf16: Vec<half::bf16> = long.iter().map(|&x| half::bf16::from_f32(x)).collect();
    let view = RawView(
        Dtype::BF16,
        vec![long.len()],
        bytemuck::cast_slice(&long_bf16).to_vec(),
    );
    let long_bytes = safetensors::serialize([("long", &view)], None).unwrap();
    let q = dir.join("long.safetensors");
    std::fs::write(&q, &long_bytes).unwrap();
    assert_eq!(load(&q).unwrap().0[0].data, long);
    // Hashed a chunk at a time (each chunk read from its own offset), as whole values hash.
    let hash = |name: &str, shape: &[usize], values: &[f32]| {
        TensorHash::new(name, shape).values(values).finish()
    };
    let mut file = TensorFile::open(&q).unwrap();
    assert_eq!(
        file.hash("long").unwrap(),
        hash("long", &[long.len()], &long)
    );
    let mut file = TensorFile::open(&p).unwrap();
    for (name, shape, values) in want {
        assert_eq!(
            file.hash(name).unwrap(),
            hash(name, shape, values),
            "{name}"
        );
    }
    std::fs::write(&p, &bytes[..bytes.len() - 2]).unwrap();
    let e = load(&p).unwrap_err();
    assert!(format!("{e:#}").contains("not a safetensors file"), "{e:#}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The reference: safetensors' own encoder, through its `View` trait.
struct F32View<'a>(&'a HostTensor);

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(&self.0.data))
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

#[test]
fn streamed_file_is_byte_for_byte_what_safetensors_serializes() {
    let dir = std::env::temp_dir().join(format!("lowrank-st-bytes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.safetensors");
    let mut rng = crate::util::rng::Rng::new(5);
    // Names out of order, an empty tensor, a scalar-like one, and header lengths that need
    // 0..7 bytes of padding as the metadata grows.
    let shapes: [(&str, Vec<usize>); 5] = [
        ("h.1.mlp.c_fc.weight", vec![3, 7]),
        ("b", vec![1]),
        ("a.empty", vec![0, 4]),
        ("h.0.ln_1.bias", vec![5]),
        ("wte", vec![2, 3, 4]),
    ];
    let tensors: Vec<HostTensor> = shapes
        .iter()
        .map(|(name, shape)| HostTensor {
            name: name.to_string(),
            shape: shape.clone(),
            data: rng.normal_vec(shape.iter().product(), 1.0),
        })
        .collect();
    // One key: safetensors writes several in its HashMap's order (ours are sorted).
    for extra in 0..9 {
        let meta = HashMap::from([("note".to_string(), "x".repeat(extra))]);
        save(&p, &tensors, meta.clone()).unwrap();
        let views = tensors.iter().map(|t| (t.name.as_str(), F32View(t)));
        let want = safetensors::serialize(views, Some(meta)).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            want,
            "metadata of {extra} bytes"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The same tensors and metadata saved twice make the same bytes, the metadata's keys sorted
/// (each save's HashMap iterates its own random order: with eight keys, the two orders
/// would differ almost always), and read back whole.
#[test]
fn the_same_tensors_make_the_same_bytes() {
    let dir = std::env::temp_dir().join(format!("lowrank-st-same-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tensors = [HostTensor {
        name: "w".into(),
        shape: vec![2],
        data: vec![1.0, -2.0],
    }];
    let keys = ["format", "lowrank_model", "a", "z", "m", "b", "y", "c"];
    let meta = || -> HashMap<String, String> {
        keys.iter().map(|k| (k.to_string(), k.repeat(2))).collect()
    };
    let (p, q) = (dir.join("p.safetensors"), dir.join("q.safetensors"));
    save(&p, &tensors, meta()).unwrap();
    save(&q, &tensors, meta()).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(bytes, std::fs::read(&q).unwrap());
    let text = String::from_utf8_lossy(&bytes);
    let at = |k: &str| text.find(&format!("\"{k}\":\"{}\"", k.repeat(2))).unwrap();
    let mut sorted = keys;
    sorted.sort();
    assert!(sorted.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
    let (read, read_meta) = load(&p).unwrap();
    assert_eq!((read.as_slice(), read_meta), (&tensors[..], meta()));
    std::fs::remove_dir_all(&dir).ok();
}

/// Formed tensors are formed as they are written; one that fails or does not fill its shape
/// fails the write, which leaves the file there was; two tensors of one name are refused.
#[test]
fn formed_tensors_write_or_fail_leaving_the_old_file() {
    let dir = std::env::temp_dir().join(format!("lowrank-st-formed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.safetensors");
    let formed = |name: &str, values: Vec<f32>| Outgoing {
        name: name.into(),
        shape: vec![2],
        values: Values::Formed(Box::new(move || Ok(values))),
    };
    let kept = [1.0f32, 2.0];
    let borrowed = Outgoing {
        name: "a".into(),
        shape: vec![2],
        values: Values::Borrowed(&kept),
    };
    save_views(&p, [borrowed, formed("b", vec![3.0, 4.0])], HashMap::new()).unwrap();
    let want = vec![
        HostTensor {
            name: "a".into(),
            shape: vec![2],
            data: kept.to_vec(),
        },
        HostTensor {
            name: "b".into(),
            shape: vec![2],
            data: vec![3.0, 4.0],
        },
    ];
    assert_eq!(load(&p).unwrap().0, want);
    let failing = Outgoing {
        name: "c".into(),
        shape: vec![2],
        values: Values::Formed(Box::new(|| anyhow::bail!("no product"))),
    };
    let e = save_views(&p, [failing], HashMap::new()).unwrap_err();
    assert!(format!("{e:#}").contains("no product"), "{e:#}");
    let e = save_views(&p, [formed("c", vec![1.0; 3])], HashMap::new()).unwrap_err();
    assert!(format!("{e:#}").contains("3 values"), "{e:#}");
    let e = save_views(
        &p,
        [formed("c", vec![0.0; 2]), formed("c", vec![0.0; 2])],
        HashMap::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("two tensors are named c"), "{e}");
    assert_eq!(load(&p).unwrap().0, want);
    let leftovers = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(leftovers, 1, "a failed write left its temporary file");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn flat_tensors_give_their_spans_past_gaps() {
    let flat = FlatTensors {
        values: (0..10).map(|x| x as f32).collect(),
        spans: vec![
            Span {
                name: "a".into(),
                shape: vec![2, 2],
                offset: 0,
            },
            Span {
                name: "b".into(),
                shape: vec![3],
                offset: 4,
            },
            // A gap before it (padding rows the checkpoint leaves out).
            Span {
                name: "c".into(),
                shape: vec![2],
                offset: 8,
            },
        ],
    };
    let data: Vec<Vec<f32>> = flat.views().map(|t| t.data.to_vec()).collect();
    assert_eq!(data, [vec![0., 1., 2., 3.], vec![4., 5., 6.], vec![8., 9.]]);
    let host = flat.into_host_tensors();
    assert_eq!(
        host.iter()
            .map(|t| (t.name.as_str(), t.shape.clone(), t.data.clone()))
            .collect::<Vec<_>>(),
        [
            ("a", vec![2, 2], vec![0., 1., 2., 3.]),
            ("b", vec![3], vec![4., 5., 6.]),
            ("c", vec![2], vec![8., 9.])
        ]
    );
}

#[test]
fn fingerprint_changes_with_any_name_shape_or_value_bit() {
    let t = |name: &str, shape: Vec<usize>, data: Vec<f32>| HostTensor {
        name: name.into(),
        shape,
        data,
    };
    let base = vec![
        t("a", vec![2, 2], vec![1.0, 2.0, 3.0, 0.0]),
        t("b", vec![1], vec![5.0]),
    ];
    let same = fingerprint(&base.clone());
    // FNV-1a over 64-bit words (each name byte, 0xff, each dimension, each value's bits), then
    // over the tensors' hashes, computed apart from this code (in Python): what checkpoints
    // record, so it must not change.
    assert_eq!(same, "7d4b4b866be303a9");
    let variants = [
        vec![
            t("a", vec![2, 2], vec![1.0, 2.0, 3.0, -0.0]),
            base[1].clone(),
        ],
        vec![t("a", vec![4], vec![1.0, 2.0, 3.0, 0.0]), base[1].clone()],
        vec![
            t("c", vec![2, 2], vec![1.0, 2.0, 3.0, 0.0]),
            base[1].clone(),
        ],
        vec![base[1].clone(), base[0].clone()],
        vec![base[0].clone()],
    ];
    for v in variants {
        assert_ne!(fingerprint(&v), same, "{v:?}");
    }
}
