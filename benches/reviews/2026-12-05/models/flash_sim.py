#!/usr/bin/env python3
"""Model of kernels/flash_attention.cu (forward, flash_backward_dot, dq, dkdv) at the index level.

The instructions are modelled from the PTX ISA's documented formulas, not from the kernel's own
helpers (acc_row / acc_col / load_a_frags / mma_abt / mma_pv / store_rows are transcribed from the
kernel and checked against them):
  * mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (ISA "Matrix Fragments for mma.m16n8k16 with
    floating point type"), groupID g = lane>>2, threadID_in_group t = lane%4:
      A a_i (i=0..7, reg i/2, low half = even i): row g + 8*((i>>1)&1), col 2t + (i&1) + 8*(i>=4)
      B b_i (i=0..3, reg i/2):                   row(k) 2t + (i&1) + 8*(i>=2), col(n) g
      C c_i (i=0..3):                            row g + 8*(i>=2), col 2t + (i&1)
  * ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8m..8m+7 give the row addresses of
    matrix m; lane l gets in reg m elements (l/4, 2(l%4)+{0,1}) of matrix m, or with .trans
    (2(l%4)+{0,1}, l/4).
  * cp.async.cg 16 B with src-size 0 = zero fill; data lands only at the cp.async.wait_group that
    retires its group; a landed chunk is visible to other threads only after a __syncthreads.
Every ldmatrix 8x8 matrix must hit 8 distinct 16-byte bank groups (no bank conflict).
Shared memory starts as NaN, has exactly the launcher's dynamic size, and every access is checked:
read-after-write (a read of a chunk whose cp.async has not landed, or landed by another thread since
the last barrier), write-after-read (a cp.async / st.shared into a chunk another warp / thread read
since the last barrier), bounds, 16-byte alignment of cp.async sources and ldmatrix rows. Global
reads are bounds- and alignment-checked; every output element must be written exactly once.
Results are compared with a dense float64 causal attention (the CPU reference's algorithm).

Mutations (MUTATIONS below) re-run one shape with a deliberate bug each; every one must be caught.
Run: python3 flash_sim.py            (all shapes, exact arithmetic, then mutations that must fail)
     python3 flash_sim.py --bf16     (also round P and the stored outputs to bf16, as the GPU does)
     python3 flash_sim.py --schedule (finding 1's block-order model only)
"""
import sys
import numpy as np

ROWS, THREADS, WARPS = 64, 128, 4
LOG2E = 1.4426950408889634
MUT = None  # name of a deliberate kernel mutation (self-test of the model)
ROUND = False  # round P (the mma A operand) and stored outputs to bf16


class Hazard(Exception):
    pass


def bf16(x):
    x32 = np.ascontiguousarray(np.asarray(x, np.float32))
    u = x32.view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32)
    return r.view(np.float32).astype(np.float64)


def rnd(x):
    return bf16(x) if ROUND else np.asarray(x, np.float64)


LANE = np.arange(32)
G, TIG = LANE >> 2, LANE & 3


class Tile:
    def __init__(s, HS):
        assert HS % 16 == 0
        s.HS, s.LD = HS, HS + 8
        s.BYTES = ROWS * s.LD * 2
        s.KSTEPS, s.DFRAG = HS // 16, HS // 8


class Buf:
    """A global tensor (flat), its values and how often each element was written."""

    def __init__(s, name, data, elem_bytes):
        s.name, s.d, s.eb = name, np.array(data, np.float64), elem_bytes
        s.writes = np.zeros(len(s.d), np.int64)

    def check(s, off, n, align_elems):
        if off % align_elems:
            raise Hazard(f"{s.name}: access at element {off} not aligned to {align_elems} elements")
        if off < 0 or off + n > len(s.d):
            raise Hazard(f"{s.name}: access [{off}, {off + n}) outside [0, {len(s.d)})")

    def store(s, off, vals):
        s.check(off, len(vals), len(vals))
        s.d[off:off + len(vals)] = vals
        s.writes[off:off + len(vals)] += 1


class Smem:
    """One block's dynamic shared memory with cp.async groups and race checks."""

    def __init__(s, nbytes):
        s.n = nbytes
        s.h = np.full(nbytes // 2, np.nan)  # bf16 slots
        s.f = np.full(nbytes // 4, np.nan)  # f32 words (the dkdv rows[] region)
        nc = nbytes // 16
        s.pending = np.zeros(nc, np.int64)
        s.tile_chunk = np.zeros(nc, bool)
        s.land_epoch = np.full(nc, -1)
        s.land_tid = np.full(nc, -1)
        s.read_epoch = np.full(nc, -1)
        s.read_warps = np.zeros(nc, np.int64)
        nw = nbytes // 4
        s.fw_epoch, s.fw_tid = np.full(nw, -1), np.full(nw, -1)
        s.fr_epoch, s.fr_tids = np.full(nw, -1), [set() for _ in range(nw)]
        s.float_word = np.zeros(nw, bool)
        s.epoch, s.groups, s.open = 0, [], []

    def sync(s):
        s.epoch += 1

    def cp_async(s, tid, dst, buf, off, pred):
        if dst % 16 or dst < 0 or dst + 16 > s.n:
            raise Hazard(f"cp.async destination {dst} misaligned or outside {s.n} bytes of smem")
        c = dst // 16
        if s.read_epoch[c] == s.epoch and s.read_warps[c] & ~(1 << (tid // 32)):
            raise Hazard(f"WAR: cp.async by thread {tid} into smem byte {dst}, read by another warp since the last barrier")
        if s.float_word[dst // 4:dst // 4 + 4].any():
            raise Hazard(f"cp.async into smem byte {dst} that holds f32 rows")
        if pred:
            buf.check(off, 8, 8)
        s.pending[c] += 1
        s.tile_chunk[c] = True
        s.open.append((tid, dst, buf, off, pred))

    def commit(s):
        s.groups.append(s.open)
        s.open = []

    def wait(s, n):
        if MUT == "wait2" and n == 1:
            n = 2
        while len(s.groups) > n:
            for tid, dst, buf, off, pred in s.groups.pop(0):
                c = dst // 16
                s.h[dst // 2:dst // 2 + 8] = buf.d[off:off + 8] if pred else 0.0
                s.pending[c] -= 1
                s.land_epoch[c], s.land_tid[c] = s.epoch, tid

    def _read_chunks(s, addrs, readers, warp):
        c = addrs // 16
        if (s.pending[c] > 0).any():
            raise Hazard(f"RAW: warp {warp} reads smem byte {addrs[s.pending[c] > 0][0]} before its cp.async landed")
        bad = (s.land_epoch[c] == s.epoch) & (s.land_tid[c] != readers)
        if bad.any():
            raise Hazard(f"RAW: warp {warp} reads smem byte {addrs[bad][0]} landed by another thread with no barrier since")
        for ci in np.unique(c):
            if s.read_epoch[ci] != s.epoch:
                s.read_epoch[ci], s.read_warps[ci] = s.epoch, 0
            s.read_warps[ci] |= 1 << warp

    def ldmatrix_x4(s, addrs, warp, trans):
        addrs = np.asarray(addrs, np.int64)
        if (addrs % 16).any() or (addrs < 0).any() or (addrs + 16 > s.n).any():
            raise Hazard("ldmatrix row address misaligned or outside smem")
        s._read_chunks(addrs, warp * 32 + LANE, warp)
        for m in range(4):  # one 8x8 matrix per shared-memory wavefront: 8 distinct 16-byte bank groups
            if len(set((addrs[8 * m:8 * m + 8] // 16) % 8)) != 8:
                raise Hazard(f"ldmatrix bank conflict in matrix {m}: rows at bytes {list(addrs[8 * m:8 * m + 8])}")
        rows = s.h[(addrs // 2)[:, None] + np.arange(8)]  # (32 rows, 8)
        mats = rows.reshape(4, 8, 8)  # matrix m's row r is lane 8m + r's address
        out = np.empty((32, 4, 2))
        for m in range(4):
            for e in range(2):
                out[:, m, e] = mats[m, 2 * TIG + e, G] if trans else mats[m, G, 2 * TIG + e]
        return out

    def st_f32(s, tid, byte, v):
        w = byte // 4
        if byte % 4 or byte < 0 or byte + 4 > s.n:
            raise Hazard("st.shared.f32 outside smem")
        if s.fr_epoch[w] == s.epoch and (s.fr_tids[w] - {tid}):
            raise Hazard(f"WAR: thread {tid} stores f32 smem byte {byte} read by another thread since the last barrier")
        if s.tile_chunk[byte // 16]:
            raise Hazard(f"st.shared.f32 at byte {byte} overlaps a bf16 tile")
        s.float_word[w] = True
        s.f[w], s.fw_epoch[w], s.fw_tid[w] = v, s.epoch, tid

    def ld_f32(s, tids, bytes_):
        w = np.asarray(bytes_) // 4
        if not s.float_word[w].all():
            raise Hazard("ld.shared.f32 of a word no st.shared.f32 wrote")
        bad = (s.fw_epoch[w] == s.epoch) & (s.fw_tid[w] != tids)
        if bad.any():
            raise Hazard("RAW: f32 smem read of another thread's store with no barrier since")
        for wi, t in zip(w.ravel(), np.broadcast_to(tids, w.shape).ravel()):
            if s.fr_epoch[wi] != s.epoch:
                s.fr_epoch[wi], s.fr_tids[wi] = s.epoch, set()
            s.fr_tids[wi].add(int(t))
        return s.f[w]


# PTX ISA fragment maps, as index arrays over (lane, element).
A_ROW = np.array([[g + 8 * ((i >> 1) & 1) for i in range(8)] for g in G])
A_COL = np.array([[2 * t + (i & 1) + 8 * (i >= 4) for i in range(8)] for t in TIG])
B_ROW = np.array([[2 * t + (i & 1) + 8 * (i >= 2) for i in range(4)] for t in TIG])
B_COL = np.array([[g] * 4 for g in G])
C_ROW = np.array([[g + 8 * (i >= 2) for i in range(4)] for g in G])
C_COL = np.array([[2 * t + (i & 1) for i in range(4)] for t in TIG])
for R_, C_, shape in ((A_ROW, A_COL, (16, 16)), (B_ROW, B_COL, (16, 8)), (C_ROW, C_COL, (16, 8))):
    cover = np.zeros(shape, int)
    np.add.at(cover, (R_, C_), 1)
    assert (cover == 1).all()


def mma(d, a, b0, b1):
    """d (32, 4) += A·B; a (32, 4 regs, 2 halves), b0/b1 (32, 2)."""
    A = np.empty((16, 16))
    A[A_ROW, A_COL] = a.reshape(32, 8)
    B = np.empty((16, 8))
    B[B_ROW, B_COL] = np.concatenate([b0, b1], axis=1)
    C = np.empty((16, 8))
    C[C_ROW, C_COL] = d
    D = A @ B + C
    d[:] = D[C_ROW, C_COL]


# ---- the kernel's helpers, transcribed ---------------------------------------------------------

def load_rows(sm, F, dst, buf, src, ld, valid):
    chunks = F.HS // 8
    for tid in range(THREADS):
        for i in range(tid, ROWS * chunks, THREADS):
            r, c = i // chunks, (i % chunks) * 8
            pred = r < valid
            sm.cp_async(tid, dst + (r * F.LD + c) * 2, buf, src + r * ld + c if pred else src, pred)


def load_kv(sm, F, dst, buf, base, ld, C, tile, T):
    first = tile * ROWS * ld
    load_rows(sm, F, dst, buf, base + C + first, ld, T - tile * ROWS)
    load_rows(sm, F, dst + F.BYTES, buf, base + 2 * C + first, ld, T - tile * ROWS)


def kv_tile_ready(sm, F, skv, buf, base, ld, C, j, last, T):
    if j < last:
        load_kv(sm, F, skv + ((j + 1) & 1) * 2 * F.BYTES, buf, base, ld, C, j + 1, T)
    sm.commit()
    sm.wait(1)
    sm.sync()
    return skv + (j & 1) * 2 * F.BYTES


def load_a_frags(sm, F, tile, warp):
    f = []
    for kk in range(F.KSTEPS):
        row, col = warp * 16 + (LANE & 15), kk * 16 + (LANE >> 4) * 8
        if MUT == "afrag_order":  # matrices in the order (r0-7,k0) (r0-7,k8) (r8-15,k0) (r8-15,k8)
            row, col = warp * 16 + (LANE & 7) + (LANE >> 4) * 8, kk * 16 + ((LANE >> 3) & 1) * 8
        f.append(sm.ldmatrix_x4(tile + (row * F.LD + col) * 2, warp, False))
    return f


def mma_abt(sm, F, a, tile, warp):
    acc = np.zeros((8, 32, 4))
    for kk in range(F.KSTEPS):
        for nj in range(4):
            n = nj * 16 + (LANE & 7) + ((LANE >> 4) << 3)
            k = kk * 16 + ((LANE >> 3) & 1) * 8
            r = sm.ldmatrix_x4(tile + (n * F.LD + k) * 2, warp, False)
            if MUT == "abt_swap":
                r = r[:, [0, 2, 1, 3]]
            mma(acc[2 * nj], a[kk], r[:, 0], r[:, 1])
            mma(acc[2 * nj + 1], a[kk], r[:, 2], r[:, 3])
    return acc


def pack(p, kk):  # the four A registers of k16 step kk from an (8, 32, 4) accumulator
    a = np.stack([p[2 * kk][:, 0:2], p[2 * kk][:, 2:4], p[2 * kk + 1][:, 0:2], p[2 * kk + 1][:, 2:4]], axis=1)
    if MUT == "pack_swap":
        a = a[:, [0, 2, 1, 3]]
    return rnd(a)


def mma_pv(sm, F, o, p, tile, warp):
    for kk in range(4):
        a = pack(p, kk)
        for nj in range(F.KSTEPS):
            k = kk * 16 + (LANE & 7) + ((LANE >> 3) & 1) * 8
            n = nj * 16 + (LANE >> 4) * 8
            r = sm.ldmatrix_x4(tile + (k * F.LD + n) * 2, warp, True)
            if MUT == "pv_swap":
                r = r[:, [0, 2, 1, 3]]
            mma(o[2 * nj], a, r[:, 0], r[:, 1])
            mma(o[2 * nj + 1], a, r[:, 2], r[:, 3])


def acc_row(c):
    return (LANE >> 2) + ((c >> 1) << 3)


def acc_col(n, c):
    if MUT == "acc_col":
        return n * 8 + 2 * (LANE & 3) + (c >> 1)
    return n * 8 + 2 * (LANE & 3) + (c & 1)


def quad(v, op):
    v = op(v, v[LANE ^ 1])
    return op(v, v[LANE ^ 2])


def store_rows(buf, dst, ld, o, scale, warp, valid):
    for half in range(2):
        row = warp * 16 + (LANE >> 2) + half * 8
        for lane in range(32):
            if row[lane] >= valid:
                continue
            for n in range(len(o)):
                off = dst + row[lane] * ld + n * 8 + 2 * (lane & 3)
                buf.store(off, rnd([o[n][lane, 2 * half] * scale, o[n][lane, 2 * half + 1] * scale]))


class FaBlock:
    def __init__(s, HS, T, NH, by):
        s.bh, s.b, s.h = by, by // NH, by % NH
        s.C = NH * HS
        s.ld = 3 * s.C
        s.base = s.b * T * s.ld + s.h * HS


def cdiv(a, b):
    return (a + b - 1) // b


# ---- kernels -----------------------------------------------------------------------------------

def flash_forward(HS, qkv, out, lse, B, T, NH, scale_log2, smem_bytes):
    F = Tile(HS)
    gx = cdiv(T, ROWS)
    for by in range(B * NH):
        for bx in range(gx):
            sm = Smem(smem_bytes)
            blk = FaBlock(HS, T, NH, by)
            qt = gx - 1 - bx
            q0 = qt * ROWS
            sq, skv = 0, F.BYTES
            load_rows(sm, F, sq, qkv, blk.base + q0 * blk.ld, blk.ld, T - q0)
            load_kv(sm, F, skv, qkv, blk.base, blk.ld, blk.C, 0, T)
            sm.commit()
            o = np.zeros((WARPS, F.DFRAG, 32, 4))
            m = np.full((WARPS, 2, 32), -np.inf)
            l = np.zeros((WARPS, 2, 32))
            qf = [None] * WARPS
            for j in range(qt + 1):
                sk = kv_tile_ready(sm, F, skv, qkv, blk.base, blk.ld, blk.C, j, qt, T)
                sv = sk + F.BYTES
                for w in range(WARPS):
                    if j == 0:
                        qf[w] = load_a_frags(sm, F, sq, w)
                    s = mma_abt(sm, F, qf[w], sk, w)
                    mx = m[w].copy()
                    for n in range(8):
                        for c in range(4):
                            x = s[n][:, c] * scale_log2
                            if j == qt:
                                fut = acc_col(n, c) > w * 16 + acc_row(c)
                                if MUT == "mask_ge":
                                    fut = acc_col(n, c) >= w * 16 + acc_row(c)
                                x = np.where(fut, -np.inf, x)
                            s[n][:, c] = x
                            mx[c >> 1] = np.fmax(mx[c >> 1], x)
                    corr = np.zeros((2, 32))
                    for r in range(2):
                        mx[r] = quad(mx[r], np.fmax)
                        corr[r] = np.exp2(m[w][r] - mx[r])
                        m[w][r] = mx[r]
                        l[w][r] *= corr[r]
                    for n in range(8):
                        for c in range(4):
                            s[n][:, c] = np.exp2(s[n][:, c] - m[w][c >> 1])
                            l[w][c >> 1] += s[n][:, c]
                    for n in range(F.DFRAG):
                        for c in range(4):
                            o[w][n][:, c] *= corr[c >> 1]
                    mma_pv(sm, F, o[w], s, sv, w)
                if MUT != "no_end_sync":
                    sm.sync()
            valid = T - q0
            for w in range(WARPS):
                for r in range(2):
                    l[w][r] = quad(l[w][r], np.add)
                    row = w * 16 + (LANE >> 2) + r * 8
                    for lane in range(32):
                        if (lane & 3) == 0 and row[lane] < valid:
                            lse.store(blk.bh * T + q0 + row[lane], [m[w][r][lane] + np.log2(l[w][r][lane])])
                for n in range(F.DFRAG):
                    for c in range(4):
                        o[w][n][:, c] /= l[w][c >> 1]
                store_rows(out, (blk.b * T + q0) * blk.C + blk.h * HS, blk.C, o[w], 1.0, w, valid)


def flash_backward_dot(delta, dout, out, B, T, NH, HS):
    rows = B * T * NH
    wpb = 8
    for bx in range(cdiv(rows, wpb)):
        for wi in range(wpb):
            row = bx * wpb + wi
            if row >= rows:
                continue
            h, t, b = row % NH, (row // NH) % T, row // (NH * T)
            s = 0.0
            for lane in range(32):
                for d in range(lane, HS, 32):
                    dout.check(row * HS + d, 1, 1)
                    out.check(row * HS + d, 1, 1)
                    s += dout.d[row * HS + d] * out.d[row * HS + d]
            delta.store((b * NH + h) * T + t, [s])


def flash_backward_dq(HS, dqkv, qkv, dout, lse, delta, B, T, NH, scale_log2, scale, smem_bytes):
    F = Tile(HS)
    gx = cdiv(T, ROWS)
    for by in range(B * NH):
        for bx in range(gx):
            sm = Smem(smem_bytes)
            blk = FaBlock(HS, T, NH, by)
            qt = gx - 1 - bx
            q0 = qt * ROWS
            sq, sdo = 0, F.BYTES
            skv = sdo + F.BYTES
            load_rows(sm, F, sq, qkv, blk.base + q0 * blk.ld, blk.ld, T - q0)
            load_rows(sm, F, sdo, dout, (blk.b * T + q0) * blk.C + blk.h * HS, blk.C, T - q0)
            load_kv(sm, F, skv, qkv, blk.base, blk.ld, blk.C, 0, T)
            sm.commit()
            row_lse = np.zeros((WARPS, 2, 32))
            row_delta = np.zeros((WARPS, 2, 32))
            for w in range(WARPS):
                for r in range(2):
                    for lane in range(32):
                        t = q0 + w * 16 + (lane >> 2) + r * 8
                        if t < T:
                            lse.check(blk.bh * T + t, 1, 1)
                            delta.check(blk.bh * T + t, 1, 1)
                            row_lse[w, r, lane] = lse.d[blk.bh * T + t]
                            row_delta[w, r, lane] = delta.d[blk.bh * T + t]
            dq = np.zeros((WARPS, F.DFRAG, 32, 4))
            qf, dof = [None] * WARPS, [None] * WARPS
            for j in range(qt + 1):
                sk = kv_tile_ready(sm, F, skv, qkv, blk.base, blk.ld, blk.C, j, qt, T)
                sv = sk + F.BYTES
                for w in range(WARPS):
                    if j == 0:
                        qf[w] = load_a_frags(sm, F, sq, w)
                        dof[w] = load_a_frags(sm, F, sdo, w)
                    s = mma_abt(sm, F, qf[w], sk, w)
                    dp = mma_abt(sm, F, dof[w], sv, w)
                    for n in range(8):
                        for c in range(4):
                            fut = (j == qt) & (acc_col(n, c) > w * 16 + acc_row(c))
                            p = np.where(fut, 0.0, np.exp2(s[n][:, c] * scale_log2 - row_lse[w, c >> 1]))
                            s[n][:, c] = p * (dp[n][:, c] - row_delta[w, c >> 1])
                    mma_pv(sm, F, dq[w], s, sk, w)
                sm.sync()
            for w in range(WARPS):
                store_rows(dqkv, (blk.b * T + q0) * blk.ld + blk.h * HS, blk.ld, dq[w], scale, w, T - q0)


def flash_backward_dkdv(HS, dqkv, qkv, dout, lse, delta, B, T, NH, scale_log2, scale, smem_bytes):
    F = Tile(HS)
    gx = cdiv(T, ROWS)
    for by in range(B * NH):
        for bx in range(gx):
            sm = Smem(smem_bytes)
            blk = FaBlock(HS, T, NH, by)
            kt, tiles = bx, cdiv(T, ROWS)
            k0 = kt * ROWS
            dbase = blk.b * T * blk.C + blk.h * HS
            sk, sv = 0, F.BYTES
            sqd = sv + F.BYTES
            rows_at = 6 * F.BYTES  # float rows[2][2][64]

            def rows_byte(stage, which, x):
                return rows_at + ((stage * 2 + which) * ROWS + x) * 4

            def load_query_tile(i, stage):
                st = sqd + stage * 2 * F.BYTES
                load_rows(sm, F, st, qkv, blk.base + i * ROWS * blk.ld, blk.ld, T - i * ROWS)
                load_rows(sm, F, st + F.BYTES, dout, dbase + i * ROWS * blk.C, blk.C, T - i * ROWS)
                for tid in range(ROWS):
                    t = i * ROWS + tid
                    if t < T:
                        lse.check(blk.bh * T + t, 1, 1)
                        delta.check(blk.bh * T + t, 1, 1)
                    sm.st_f32(tid, rows_byte(stage, 0, tid), lse.d[blk.bh * T + t] if t < T else 0.0)
                    sm.st_f32(tid, rows_byte(stage, 1, tid), delta.d[blk.bh * T + t] if t < T else 0.0)

            load_kv(sm, F, sk, qkv, blk.base, blk.ld, blk.C, kt, T)
            load_query_tile(kt, 0)
            sm.commit()
            dk = np.zeros((WARPS, F.DFRAG, 32, 4))
            dv = np.zeros((WARPS, F.DFRAG, 32, 4))
            kf, vf = [None] * WARPS, [None] * WARPS
            for i in range(kt, tiles):
                stage = (i - kt) & 1
                sq = sqd + stage * 2 * F.BYTES
                sdo = sq + F.BYTES
                if i + 1 < tiles:
                    load_query_tile(i + 1, stage ^ 1)
                sm.commit()
                sm.wait(1)
                sm.sync()
                for w in range(WARPS):
                    if i == kt:
                        kf[w] = load_a_frags(sm, F, sk, w)
                        vf[w] = load_a_frags(sm, F, sv, w)
                    p = mma_abt(sm, F, kf[w], sq, w)
                    tids = w * 32 + LANE
                    for n in range(8):
                        for c in range(4):
                            key = k0 + w * 16 + acc_row(c)
                            col = acc_col(n, c)
                            query = i * ROWS + col
                            lse_c = sm.ld_f32(tids, rows_byte(stage, 0, col))
                            keep = (key <= query) & (query < T)
                            if MUT == "dkdv_mask":
                                keep = (key < query) & (query < T)
                            p[n][:, c] = np.where(keep, np.exp2(p[n][:, c] * scale_log2 - lse_c), 0.0)
                    mma_pv(sm, F, dv[w], p, sdo, w)
                    dp = mma_abt(sm, F, vf[w], sdo, w)
                    for n in range(8):
                        for c in range(4):
                            p[n][:, c] *= dp[n][:, c] - sm.ld_f32(tids, rows_byte(stage, 1, acc_col(n, c)))
                    mma_pv(sm, F, dk[w], p, sq, w)
                if MUT != "dkdv_no_end_sync":
                    sm.sync()
            dst = (blk.b * T + k0) * blk.ld + blk.h * HS
            for w in range(WARPS):
                store_rows(dqkv, dst + blk.C, blk.ld, dk[w], scale, w, T - k0)
                store_rows(dqkv, dst + 2 * blk.C, blk.ld, dv[w], 1.0, w, T - k0)


# ---- the launcher's numbers (src/backend/cuda/flash_attention.rs) and the reference -------------

def tile_bytes(hs):
    return ROWS * (hs + 8) * 2


def reference(qkv, dout, B, T, NH, HS):
    x = qkv.reshape(B, T, 3, NH, HS)
    dy = dout.reshape(B, T, NH, HS)
    out = np.zeros((B, T, NH, HS))
    lse = np.zeros((B, NH, T))
    dqkv = np.zeros((B, T, 3, NH, HS))
    scale = 1 / np.sqrt(HS)
    mask = np.tril(np.ones((T, T), bool))
    for b in range(B):
        for h in range(NH):
            q, k, v = x[b, :, 0, h], x[b, :, 1, h], x[b, :, 2, h]
            s = np.where(mask, q @ k.T * scale, -np.inf)
            mx = s.max(1, keepdims=True)
            e = np.exp(s - mx)
            z = e.sum(1, keepdims=True)
            att = e / z
            out[b, :, h] = att @ v
            lse[b, h] = (np.log(z[:, 0]) + mx[:, 0]) * LOG2E
            dpre = dy[b, :, h] @ v.T
            mean = (att * dpre).sum(1, keepdims=True)
            ds = att * (dpre - mean) * scale
            dqkv[b, :, 0, h] = ds @ k
            dqkv[b, :, 1, h] = ds.T @ q
            dqkv[b, :, 2, h] = att.T @ dy[b, :, h]
    return out.reshape(-1), lse.reshape(-1), dqkv.reshape(-1)


def run(B, T, NH, HS, seed=0):
    rng = np.random.default_rng(seed)
    C = NH * HS
    qkv = Buf("qkv", bf16(rng.standard_normal(B * T * 3 * C)), 2)
    dout_v = bf16(rng.standard_normal(B * T * C))
    out = Buf("out", np.full(B * T * C, np.nan), 2)
    lse = Buf("lse", np.full(B * NH * T, np.nan), 4)
    scale = np.float32(1.0 / np.sqrt(np.float32(HS)))
    scale_log2 = float(scale * np.float32(LOG2E))
    scale = float(scale)
    tb = tile_bytes(HS)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        flash_forward(HS, qkv, out, lse, B, T, NH, scale_log2, 5 * tb)
        dout = Buf("dout", dout_v, 2)
        delta = Buf("delta", np.full(B * NH * T, np.nan), 4)
        flash_backward_dot(delta, dout, out, B, T, NH, HS)
        dqkv = Buf("dqkv", np.full(B * T * 3 * C, np.nan), 2)
        flash_backward_dq(HS, dqkv, qkv, dout, lse, delta, B, T, NH, scale_log2, scale, 6 * tb)
        flash_backward_dkdv(HS, dqkv, qkv, dout, lse, delta, B, T, NH, scale_log2, scale, 6 * tb + 2 * 2 * ROWS * 4)
    r_out, r_lse, r_dqkv = reference(qkv.d, dout_v, B, T, NH, HS)
    for b in (out, lse, delta, dqkv):
        if not (b.writes == 1).all():
            bad = np.flatnonzero(b.writes != 1)
            raise Hazard(f"{b.name}: {len(bad)} elements written {sorted(set(b.writes[bad]))} times, first at {bad[0]}")
    errs = {}
    for name, got, want in (("out", out.d, r_out), ("lse", lse.d, r_lse), ("dqkv", dqkv.d, r_dqkv)):
        if not np.isfinite(got).all():
            raise Hazard(f"{name}: non-finite values")
        errs[name] = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    return errs


SHAPES = [(2, T, 2, HS) for HS in (64, 32) for T in (1, 63, 64, 65, 200)] + [(3, 130, 3, 64)]
MUTATIONS = ["mask_ge", "pv_swap", "abt_swap", "afrag_order", "pack_swap", "acc_col", "dkdv_mask", "no_end_sync", "wait2",
             "dkdv_no_end_sync"]


def schedule():
    """Finding 1: blocks dispatched in linear order (x fastest) to `slots` resident blocks, each
    block taking (its key or query tiles) time units, versus longest-first over the whole grid.
    Idealised (a block's speed does not depend on how many share its SM), so an upper bound."""
    import heapq

    def makespan(durs, slots):
        h = [0] * slots
        for d in durs:
            heapq.heappush(h, heapq.heappop(h) + d)
        return max(h)
    gx, NH = 16, 12  # T = 1024, GPT-2 small
    for B in (4, 8, 16):
        for name, per_sm in (("forward/dq, 3 blocks/SM", 3), ("dkdv, 2 blocks/SM", 2)):
            slots = 132 * per_sm  # H100 SXM / H200: 132 SMs
            lin = [gx - x for _ in range(B * NH) for x in range(gx)]
            a, b = makespan(lin, slots), makespan(sorted(lin, reverse=True), slots)
            print(f"B={B:2} T=1024 NH=12 {name}: linear {a}, longest-first {b}, ratio {a / b:.2f}")


def main():
    global MUT, ROUND
    if "--schedule" in sys.argv:
        return schedule()
    ROUND = "--bf16" in sys.argv
    tol = 2e-2 if ROUND else 1e-6
    ok = True
    for sh in SHAPES:
        e = run(*sh)
        good = all(v < tol for v in e.values())
        ok &= good
        print(f"B,T,NH,HS={sh}: max rel err " + ", ".join(f"{k} {v:.1e}" for k, v in e.items()) + ("" if good else "  FAIL"))
    print("all shapes match the dense reference" if ok else "MISMATCH")
    # Each mutation must be caught (a hazard, a count, or a mismatch), or the model tests nothing.
    for MUT in MUTATIONS:
        try:
            e = run(1, 200, 1, 32)
            caught = any(v >= tol for v in e.values())
            msg = "mismatch " + ", ".join(f"{k} {v:.1e}" for k, v in e.items())
        except Hazard as h:
            caught, msg = True, str(h)
        ok &= caught
        print(f"mutation {MUT}: {'caught' if caught else 'NOT CAUGHT'} ({msg[:150]})")
    MUT = None
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
