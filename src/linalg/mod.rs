//! Host linear algebra on small matrices (faer, f64): the singular values of a low-rank product
//! from thin QR of its factors plus an SVD of the k×k core, the core's truncation, and the explained
//! rank of a dense update from its Gram matrix. Factors come in the transposed storage of
//! `backend::LowRankShape` (Ut is k × n_in, Vt is k × n_out, row-major).

pub mod factor;
pub mod gram;
pub mod svd;

pub use factor::{CoreSvd, Truncation};
pub use gram::gram_explained_rank;

/// Explained ratio g(j) = Σ_{i≤j} s_i² / total: the smallest j with g(j) > `alpha`, at least `min`
/// (1-based count of singular values). `s` is sorted descending; `total` is Σ s_i² over the whole
/// spectrum (it may exceed Σ over `s` when `s` is a sketch). None when `s` does not explain enough.
pub fn explained_rank(s: &[f64], total: f64, alpha: f64, min: usize) -> Option<usize> {
    if total <= 0.0 {
        return Some(min);
    }
    let mut acc = 0.0;
    for (i, x) in s.iter().enumerate() {
        acc += x * x;
        if i + 1 >= min && acc / total > alpha {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::explained_rank;

    #[test]
    fn explained_rank_counts_energy_by_hand() {
        // Energies 16, 9, 4, 1 (total 30): g = 0.533, 0.833, 0.967, 1.
        let s = [4.0, 3.0, 2.0, 1.0];
        assert_eq!(explained_rank(&s, 30.0, 0.5, 1), Some(1));
        assert_eq!(explained_rank(&s, 30.0, 0.9, 1), Some(3));
        assert_eq!(explained_rank(&s, 30.0, 0.9, 4), Some(4));
        // A sketch that holds only 25 of 30 cannot reach 0.9.
        assert_eq!(explained_rank(&s[..2], 30.0, 0.9, 1), None);
        assert_eq!(explained_rank(&[0.0, 0.0], 0.0, 0.9, 2), Some(2));
    }
}
