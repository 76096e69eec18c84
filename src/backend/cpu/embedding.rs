//! Token + position embedding (CPU twin of kernels/embedding.cu).

use crate::backend::SeqShape;
use rayon::prelude::*;

/// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]. Operands are checked by `check_embedding`.
pub fn forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], s: SeqShape) {
    let c = s.channels;
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(i, (o, &tok))| {
            let t = i % s.seq;
            let (w, p) = (&wte[tok as usize * c..][..c], &wpe[t * c..][..c]);
            o.iter_mut()
                .zip(w.iter().zip(p))
                .for_each(|(o, (w, p))| *o = w + p);
        });
}

/// dwte[tokens[i],:] += dout[i,:]. Sequential over tokens so repeated ids add in a fixed order
/// (deterministic); parallel over channels would not pay at C ≤ 1280.
pub fn backward(dwte: &mut [f32], dout: &[f32], tokens: &[u32], c: usize) {
    for (d, &tok) in dout.chunks(c).zip(tokens) {
        let row = &mut dwte[tok as usize * c..][..c];
        row.iter_mut().zip(d).for_each(|(w, d)| *w += d);
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::test_util::{assert_close, random, upload};
    use crate::backend::cpu::Cpu;
    use crate::backend::{Backend, Buffer, DType, SeqShape};

    #[test]
    fn embedding_matches_naive_lookup_and_scatter() {
        let cpu = Cpu;
        let (b, t, c, rows) = (3, 7, 13, 11);
        let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % rows) as u32).collect();
        let (wte, wpe) = (random(rows * c, 1), random(9 * c, 2));
        let (wte_b, wpe_b) = (upload(&cpu, &wte), upload(&cpu, &wpe));
        let mut out = cpu.alloc(DType::F32, b * t * c).unwrap();
        cpu.embedding_forward(
            out.all_mut(),
            &tokens,
            wte_b.all(),
            wpe_b.all(),
            SeqShape::new(b, t, c),
        )
        .unwrap();
        let mut want = vec![0.0f64; b * t * c];
        for i in 0..b * t {
            for j in 0..c {
                want[i * c + j] =
                    wte[tokens[i] as usize * c + j] as f64 + wpe[(i % t) * c + j] as f64;
            }
        }
        assert_close("embedding_forward", out.as_slice(), &want, 1e-6);

        let dout = random(b * t * c, 3);
        let dout_b = upload(&cpu, &dout);
        let mut dwte = upload(&cpu, &wte); // accumulates onto existing values
        cpu.embedding_backward(dwte.all_mut(), dout_b.all(), &tokens, c)
            .unwrap();
        let mut want: Vec<f64> = wte.iter().map(|&x| x as f64).collect();
        for i in 0..b * t {
            for j in 0..c {
                want[tokens[i] as usize * c + j] += dout[i * c + j] as f64;
            }
        }
        assert_close("embedding_backward", dwte.as_slice(), &want, 1e-5);
    }

    #[test]
    fn embedding_rejects_out_of_range_token_and_bad_windows() {
        let cpu = Cpu;
        let (wte, wpe) = (
            upload(&cpu, &random(4 * 3, 1)),
            upload(&cpu, &random(2 * 3, 2)),
        );
        let mut out = cpu.alloc(DType::F32, 2 * 3).unwrap();
        let err = cpu
            .embedding_forward(
                out.all_mut(),
                &[1, 4],
                wte.all(),
                wpe.all(),
                SeqShape::new(1, 2, 3),
            )
            .unwrap_err();
        assert!(err.to_string().contains("token id 4"), "{err}");
        let err = cpu
            .embedding_forward(
                out.all_mut(),
                &[1, 2],
                wte.all(),
                wpe.all(),
                SeqShape::new(1, 3, 2),
            )
            .unwrap_err();
        assert!(err.to_string().contains("tokens window"), "{err}");
    }
}
