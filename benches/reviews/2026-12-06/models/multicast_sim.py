#!/usr/bin/env python3
"""Protocol model of the TMA-multicast cluster variant of kernels/lowrank_tma.cu as of commit 17be500
(TmaTile<BN, false, 2>, tma_produce / tma_consume / seg_gemm_tma with CL = 2; the entry points
lowrank_{y,dx}_mc{256,128}_*), with the launcher's persistent grid and tile walk (seg_gemm.rs,
tiles.rs, tma.rs at 17be500). Adapted from models/pingpong_sim.py (same mbarrier and wgmma-group
model); no arithmetic: every shared-memory region carries the tag of the box that last landed in
it, every accumulator the list of K tiles added to it.

Hardware, from the documentation (PTX ISA 8.x), not from the kernel's helpers or tests/gpu-emu:
  * mbarrier (one per CTA and address): init(count): phase 0, pending = count, tx = 0;
    arrive(.expect_tx b): tx += b, then pending -= 1; complete_tx(b): tx -= b (tx may go negative:
    the ISA's range is [-(2^20 - 1), 2^20 - 1]); a phase completes when pending == 0 and tx == 0.
    try_wait.parity(P) is true iff phase % 2 != P: the model asserts that every poll is made with
    the barrier at the waiter's intended phase q or q + 1 (PHASE_ASSERT). An arrival on a phase
    with no pending arrival is undefined (reported).
  * mapa + mbarrier.arrive.release.cluster.shared::cluster: an arrival on the barrier at the same
    offset in CTA `cta`. It is performed at some later time (a message in flight, delivered at a
    random later step); the two arrivals of one release (CTA 0, then CTA 1) are independent
    messages; only arrivals of one thread on one barrier stay in order (same location).
  * cp.async.bulk.tensor.2d ... .multicast::cluster (mask 0b11): one copy per destination CTA, each
    landing independently at a random later step at the same CTA-relative offset, completing the
    box's full byte count on the mbarrier at the same offset in that CTA. A box with no element
    inside its tensor is reported (its byte count is undocumented; the kernel promises not to
    issue one). A copy into a region an unretired wgmma reads (WAR), or while another copy writes
    it, is reported; a copy or arrival into a CTA whose barriers are not initialised, or which has
    exited, is reported.
  * wgmma: the four warps of a consumer warpgroup are separate coroutines; fence / mma_async /
    commit_group synchronise nothing across warps (the ISA's .sync is per warp). A warpgroup's
    commit group completes (random later step, in commit order) once all four warps committed it;
    its shared-memory reads last from the first warp's issue to completion. wait_group N is per
    warp. Only the leader (lane 0 of warp 0) releases.
  * barrier.cluster.arrive.release / wait.acquire: every modelled thread of both CTAs; a thread's
    arrive comes after its earlier arrivals were performed (release). A CTA exits when the barrier
    at the end completes (or, planted bug no_end_sync, when its own threads are done).

Kernel code transcribed (17be500, kernels/lowrank_tma.cu): the producer (lines 111-147), the
consumer (163-230, PP = false), seg_gemm_tma (232-275: full count 1, empty STAGE_READERS = 4,
cluster_sync after the inits and at the end), TileWalk (91-96).

Checks: no hang (every live actor spinning and no copy, arrival or wgmma group left in flight, or a
step limit); every poll unambiguous; every complete_tx lands in the phase of its fill and every
expect_tx arrival in the phase it announces; at each full-phase completion, the bytes landed for
that fill in that CTA equal what its producer announced and no copy of it is left in flight; each
empty phase v completes only once all four consumer warpgroups of the cluster have retired use v;
no RAW (a wgmma reading a region in flight or holding another box), no WAR; tx within range;
accumulators zeroed and read with no wgmma in flight; every output half-tile of the problem stored
exactly once, by the right CTA and consumer, with the K tiles 0..ktiles-1 of the right A rows and B
columns; the phantom tile (rank 1 below the last row block) stores nothing; no box wholly outside
its tensor; no copy or arrival into an exited CTA. It also counts, without failing, arrivals that
land in another phase than the one they release (legal under the ISA: mbarrier counts arrivals) and
complete_tx that take a tx-count below zero (a peer's multicast before the local expect_tx).

Run: python3 benches/reviews/2026-12-06/models/multicast_sim.py          (about 4 minutes)
     python3 benches/reviews/2026-12-06/models/multicast_sim.py --quick  (about 50 seconds)
Only the standard library is used. Exit status 0 iff the kernel passes every case in both delivery
modes, the launcher's grids cover every tile once, and every planted bug is caught.
"""
import collections
import random
import sys

A_BYTES, NN_BOX_BYTES = 128 * 64 * 2, 64 * 64 * 2
LIMIT = (1 << 20) - 1

MUT = None  # a planted bug (the model's self-test)
PHASE_ASSERT = True  # the bookkeeping assertions; off: only symptoms (hang, RAW, WAR, stores, ...)
INSTANT = False  # arrivals performed at once, a release's two atomically (as tests/gpu-emu does)


class ModelError(Exception):
    pass


class Hang(ModelError):
    pass


WAIT, STEP = "wait", "step"


def cdiv(a, b):
    return -(-a // b)


class Problem:
    """One product as the kernel sees it: m rows, n_valid = n_store columns, K tiles of segment 0
    (ktiles0) then segment 1, NT flags per segment, tile width BN, the grid's clusters G."""

    def __init__(self, m, n_valid, BN, ktiles0, ktiles, nt, G):
        self.m, self.n_valid, self.BN, self.ktiles0, self.ktiles, self.nt, self.G = m, n_valid, BN, ktiles0, ktiles, tuple(nt), G
        self.STAGES = 4 if BN == 256 else 6
        self.B_BYTES = 64 * BN * 2
        self.NT_BOX_BYTES = self.B_BYTES // 2
        self.n_tiles = cdiv(n_valid, BN)
        self.m_tiles = cdiv(m, 128)
        self.total = self.n_tiles * cdiv(m, 2 * 128)  # TileWalk.total (lowrank_tma.cu:241)

    def units(self, cluster):
        stride = self.G * (2 if MUT == "walk_stride_blocks" else 1)  # gridDim.x / CL
        return list(range(cluster, self.total, stride))

    def m0(self, unit, rank):  # TileWalk::m0 (line 93)
        return (unit // self.n_tiles * 2 + rank) * 128

    def n0(self, unit):  # TileWalk::n0 (line 95)
        return unit % self.n_tiles * self.BN

    def __repr__(self):
        return (f"m={self.m} n={self.n_valid} BN={self.BN} ktiles={self.ktiles0}+{self.ktiles - self.ktiles0} "
                f"nt={''.join('T' if x else 'N' for x in self.nt)} G={self.G}")


class MBar:
    def __init__(self, cl, cta, name, count, on_complete=None):
        self.cl, self.cta, self.name, self.count = cl, cta, f"{name} of CTA {cta}", count
        self.pending, self.tx, self.phase = count, 0, 0
        self.on_complete = on_complete

    def _check_live(self, what):
        if not self.cl.inited[self.cta]:
            raise ModelError(f"{what} on {self.name} before its mbarrier.init (no cluster barrier between init and remote use)")
        if self.cl.exited[self.cta]:
            raise ModelError(f"{what} on {self.name}, whose CTA has exited (its shared memory is gone)")

    def _complete(self):
        if self.pending == 0 and self.tx == 0:
            if self.on_complete:
                self.on_complete(self, self.phase)
            self.phase += 1
            self.pending = self.count

    def arrive(self, expect_tx=0, intent=None):
        self._check_live("an arrival")
        if self.pending == 0:
            raise ModelError(f"arrival on {self.name} beyond the {self.count} its phase {self.phase} expects (undefined)")
        if intent is not None and intent != self.phase:
            if expect_tx and PHASE_ASSERT:
                raise ModelError(f"arrive.expect_tx for fill {intent} on {self.name} at phase {self.phase}")
            self.cl.stats["misphased arrivals"] += 1
            self.cl.stats["early arrivals" if intent > self.phase else "late arrivals"] += 1
            self.cl.stats[f"misphased arrivals on CTA {self.cta}"] += 1
            if not self.cl.misphase:
                self.cl.misphase = (f"an arrival releasing use {intent} lands on {self.name} at its phase {self.phase} "
                                    f"(pending {self.pending} of {self.count})")
        self.tx += expect_tx
        if self.tx > LIMIT:
            raise ModelError(f"tx-count of {self.name} above 2^20 - 1")
        self.pending -= 1
        self.cl.events += 1
        self._complete()

    def complete_tx(self, nbytes, intent):
        self._check_live("a complete_tx")
        if PHASE_ASSERT and intent != self.phase:
            raise ModelError(f"{nbytes} bytes of fill {intent} complete on {self.name} at its phase {self.phase}")
        self.tx -= nbytes
        if self.tx < 0:
            self.cl.stats["negative tx-counts"] += 1
        if self.tx < -LIMIT:
            raise ModelError(f"tx-count of {self.name} below -(2^20 - 1)")
        self.cl.events += 1
        self._complete()

    def try_wait(self, parity, intended, who):
        self._check_live("a try_wait")
        if PHASE_ASSERT and not (intended <= self.phase <= intended + 1):
            raise ModelError(f"ambiguous parity wait: {who} polls {self.name} for its phase {intended} (parity {parity & 1}) "
                             f"while the barrier is at phase {self.phase}")
        return (self.phase & 1) != (parity & 1)


class Region:
    __slots__ = ("tag", "inflight", "readers")

    def __init__(self):
        self.tag, self.inflight, self.readers = None, 0, 0


class Group:
    def __init__(self):
        self.content = {}
        self.committed = set()
        self.regions = []


class Cluster:
    """The two CTAs of one cluster (`cid` = blockIdx.x / 2) walking their units."""

    def __init__(self, pb, cid, rng, sched, units=None):
        self.pb, self.cid, self.rng, self.sched = pb, cid, rng, sched
        self.units = pb.units(cid) if units is None else units
        S = pb.STAGES
        self.events = 0
        self.stats = collections.Counter()
        self.misphase = None
        self.inited, self.exited = [False, False], [False, False]
        readers = 2 if MUT in ("empty_count_2", "release_own_only_count_2") else 4  # STAGE_READERS = 2 * CL
        self.full = [[MBar(self, r, f"full[{s}]", 1, self._full_done) for s in range(S)] for r in range(2)]
        self.empty = [[MBar(self, r, f"empty[{s}]", readers, self._empty_done) for s in range(S)] for r in range(2)]
        self.pieces = pb.BN // 64
        self.regions = [[{k: Region() for k in ["A0", "A1"] + [f"B{j}" for j in range(self.pieces)]} for _ in range(S)]
                        for _ in range(2)]
        self.copies = []  # (dst, s, names, nbytes, use, tags)
        self.msgs = collections.OrderedDict()  # (src, dst, s) -> deque of uses
        self.outstanding = collections.Counter()  # src -> arrivals in flight
        self.announced = {}  # (cta, s, use) -> bytes announced by expect_tx
        self.landed = collections.Counter()  # (cta, s, use) -> bytes landed
        self.inflight_fill = collections.Counter()  # (cta, s, use) -> copies in flight
        self.released = {(r, c): [-1] * S for r in range(2) for c in range(2)}  # highest use released per stage
        self.groups = {(r, c): [] for r in range(2) for c in range(2)}
        self.ndone = {(r, c): 0 for r in range(2) for c in range(2)}
        self.ncommit = {(r, c, w): 0 for r in range(2) for c in range(2) for w in range(4)}
        self.acc = {(r, c, w): [] for r in range(2) for c in range(2) for w in range(4)}
        self.stores = collections.Counter()  # (mb, nb, half) -> times stored
        self.n_actors = 2 + 16
        self.start_arrived = 0
        self.start_local = [0, 0]
        self.end_arrived = 0
        self.end_local = [0, 0]

    # --- barrier completion hooks: the bookkeeping assertions
    def _full_done(self, bar, phase):
        key = (bar.cta, self.full[bar.cta].index(bar), phase)
        if PHASE_ASSERT:
            if self.inflight_fill[key]:
                raise ModelError(f"{bar.name} completes phase {phase} with {self.inflight_fill[key]} of its copies in flight")
            if self.landed[key] != self.announced.get(key):
                raise ModelError(f"{bar.name} completes phase {phase}: {self.landed[key]} bytes landed, "
                                 f"{self.announced.get(key)} announced")

    def _empty_done(self, bar, phase):
        s = self.empty[bar.cta].index(bar)
        if PHASE_ASSERT:
            lag = [k for k, v in self.released.items() if v[s] < phase]
            if lag:
                raise ModelError(f"{bar.name} completes phase {phase} before consumer(s) {lag} released use {phase}")

    # --- copies
    def issue_copy(self, dst, s, names, nbytes, use, tags):
        if not self.inited[dst]:
            raise ModelError(f"a copy into CTA {dst} before its barriers were initialised (no cluster barrier)")
        if self.exited[dst]:
            raise ModelError(f"a copy into CTA {dst}, which has exited")
        for k in names:
            reg = self.regions[dst][s][k]
            if reg.readers:
                raise ModelError(f"WAR: a copy of {tags[k]} issued into CTA {dst} stage {s} {k}, which an unretired wgmma reads")
            if reg.inflight:
                raise ModelError(f"a copy issued into CTA {dst} stage {s} {k} while another copy writes it")
            reg.inflight += 1
        self.copies.append((dst, s, names, nbytes, use, tags))
        self.inflight_fill[(dst, s, use)] += 1
        self.events += 1

    def land_copy(self, i):
        dst, s, names, nbytes, use, tags = self.copies.pop(i)
        if self.exited[dst]:
            raise ModelError(f"a copy lands in CTA {dst}, which has exited")
        for k in names:
            reg = self.regions[dst][s][k]
            reg.inflight -= 1
            reg.tag = tags[k]
        self.inflight_fill[(dst, s, use)] -= 1
        self.landed[(dst, s, use)] += nbytes
        self.full[dst][s].complete_tx(nbytes, use)

    # --- remote arrivals
    def send_arrival(self, src, dst, s, use):
        if INSTANT:
            self.empty[dst][s].arrive(intent=use)
            return
        self.msgs.setdefault((src, dst, s), collections.deque()).append(use)
        self.outstanding[src] += 1
        self.events += 1

    def deliver(self, key):
        src, dst, s = key
        use = self.msgs[key].popleft()
        if not self.msgs[key]:
            del self.msgs[key]
        self.outstanding[src] -= 1
        self.empty[dst][s].arrive(intent=use)

    # --- wgmma groups
    def pending(self, r, c, w):
        return max(0, self.ncommit[(r, c, w)] - self.ndone[(r, c)])

    def completable(self):
        out = []
        for key, gs in self.groups.items():
            k = self.ndone[key]
            if k < len(gs) and len(gs[k].committed) == 4:
                out.append(key)
        return out

    def complete_group(self, key):
        g = self.groups[key][self.ndone[key]]
        for reg in g.regions:
            reg.readers -= 1
        self.ndone[key] += 1
        r, c = key
        for w, (unit, kt, s) in g.content.items():
            self.acc[(r, c, w)].append((unit, kt))
        self.events += 1

    def issue(self, r, c, w, s, unit, kt):
        pb = self.pb
        gi = self.ncommit[(r, c, w)]
        gs = self.groups[(r, c)]
        while len(gs) <= gi:
            gs.append(Group())
        g = gs[gi]
        for other in g.content.values():
            if other != (unit, kt, s):
                raise ModelError(f"warps of CTA {r} consumer {c} put different K tiles in one wgmma group: .aligned violated")
        g.content[w] = (unit, kt, s)
        m_last = (pb.m - 1) // 128 * 128
        n0 = pb.n0(unit)
        want = {f"A{c}": ("A", unit, kt, min(pb.m0(unit, r), m_last))}
        for j in range(self.pieces):
            if n0 + 64 * j < pb.n_valid:  # columns the epilogue stores
                want[f"B{j}"] = ("B", unit, kt, j)
        for k in [f"A{c}"] + [f"B{j}" for j in range(self.pieces)]:
            reg = self.regions[r][s][k]
            if reg.inflight:
                raise ModelError(f"RAW: CTA {r} consumer {c} warp {w} reads stage {s} {k} while a copy writes it")
            if k in want and reg.tag != want[k]:
                raise ModelError(f"RAW: CTA {r} consumer {c} warp {w} reads K tile {kt} of unit {unit} from stage {s} {k}, "
                                 f"which holds {reg.tag}, not {want[k]}")
            reg.readers += 1
            g.regions.append(reg)

    # --- cluster barriers (seg_gemm_tma lines 244-261 and 274)
    def start_sync(self, r, producer):
        if producer:
            self.inited[r] = True  # thread 0: mbarrier.init x 2 STAGES, fence.mbarrier_init, fence.proxy.async
            self.events += 1
        if MUT == "no_start_sync":  # __syncthreads only
            self.start_local[r] += 1
            self.events += 1
            while self.start_local[r] < self.n_actors // 2:
                yield WAIT
            return
        self.start_arrived += 1
        self.events += 1
        while self.start_arrived < self.n_actors:
            yield WAIT

    def end_sync(self, r, me):
        while self.outstanding[me]:  # barrier.cluster.arrive.release: after this thread's arrivals
            yield WAIT
        if MUT == "no_end_sync":
            self.end_local[r] += 1
            self.events += 1
            if self.end_local[r] == self.n_actors // 2:
                self.exit_cta(r)
            return
        self.end_arrived += 1
        self.events += 1
        while self.end_arrived < self.n_actors:
            yield WAIT
        if not self.exited[r]:
            self.exit_cta(0)
            self.exit_cta(1)

    def exit_cta(self, r):
        for (dst, s, *_rest) in self.copies:
            if dst == r:
                raise ModelError(f"CTA {r} exits with a copy into its stage {s} in flight")
        for key in self.groups:
            if key[0] == r and self.ndone[key] != len(self.groups[key]):
                raise ModelError(f"CTA {r} exits with wgmmas in flight")
        if PHASE_ASSERT:
            for (src, dst, s) in self.msgs:
                if dst == r:
                    raise ModelError(f"CTA {r} exits with an arrival from {src} on its empty[{s}] in flight")
        self.exited[r] = True
        self.events += 1

    # --- the producer (tma_produce, lines 111-147), thread 0 of CTA r
    def producer(self, r):
        pb = self.pb
        me = ("P", r)
        yield from self.start_sync(r, True)
        m_last = (pb.m - 1) // 128 * 128
        it = 0
        for unit in self.units:
            m0 = pb.m0(unit, r) if MUT == "phantom_unclamped" else min(pb.m0(unit, r), m_last)
            n0 = pb.n0(unit)
            nn_boxes = min(pb.BN // 64, cdiv(pb.n_valid - n0, 64))
            nt_boxes = min(2, cdiv(pb.n_valid - n0, pb.BN // 2))
            for kt in range(pb.ktiles):
                s, use = it % pb.STAGES, it // pb.STAGES
                if use > 0:
                    par = use & 1 if MUT == "producer_parity" else (use - 1) & 1
                    while not self.empty[r][s].try_wait(par, use - 1, f"the producer of CTA {r}"):
                        yield WAIT
                seg = 1 if kt >= pb.ktiles0 else 0
                nt = pb.nt[seg]
                if nt:
                    b_bytes = nt_boxes * pb.NT_BOX_BYTES
                    if MUT == "expect_own_half":
                        b_bytes = pb.NT_BOX_BYTES if r < nt_boxes else 0
                else:
                    b_bytes = nn_boxes * NN_BOX_BYTES
                    if MUT == "expect_own_half":
                        b_bytes = sum(NN_BOX_BYTES for j in range(nn_boxes) if j % 2 == r)
                if MUT == "expect_full_tile":
                    b_bytes = pb.B_BYTES
                bar = self.full[r][s]
                self.announced[(r, s, use)] = A_BYTES + b_bytes
                bar.arrive(expect_tx=A_BYTES + b_bytes, intent=use)
                # A: this CTA's rows (a box wholly below m must not be issued)
                if m0 >= pb.m:
                    raise ModelError(f"CTA {r} issues an A box at row {m0}, wholly outside the {pb.m}-row tensor")
                tag = ("A", unit, kt, m0)
                self.issue_copy(r, s, ["A0", "A1"], A_BYTES, use, {"A0": tag, "A1": tag})
                mask = [r] if MUT == "mask_own" else [0, 1]
                per_half = pb.BN // 128  # 64-column pieces per NT half
                if nt:
                    if r < nt_boxes or MUT == "nt_half_unguarded":
                        if n0 + r * (pb.BN // 2) >= pb.n_valid:
                            raise ModelError(f"CTA {r} issues an NT B box at row {n0 + r * pb.BN // 2}, wholly outside n = {pb.n_valid}")
                        names = [f"B{j}" for j in range(r * per_half, (r + 1) * per_half)]
                        tags = {k: ("B", unit, kt, int(k[1:])) for k in names}
                        for dst in mask:
                            self.issue_copy(dst, s, names, pb.NT_BOX_BYTES, use, tags)
                else:
                    for j in range(pb.BN // 64):
                        mine = j % 2 == r or (MUT == "nn_both_ranks_box0" and j == 0)
                        if j < nn_boxes and mine:
                            if n0 + 64 * j >= pb.n_valid:
                                raise ModelError(f"NN B box at column {n0 + 64 * j}, wholly outside n = {pb.n_valid}")
                            for dst in mask:
                                self.issue_copy(dst, s, [f"B{j}"], NN_BOX_BYTES, use, {f"B{j}": ("B", unit, kt, j)})
                it += 1
                yield STEP
        yield from self.end_sync(r, me)

    # --- one warp of consumer warpgroup c of CTA r (tma_consume, lines 163-230, PP = false)
    def warp(self, r, c, w):
        pb = self.pb
        leader = w == 0
        who = f"CTA {r} consumer {c} warp {w}"
        me = ("C", r, c, w)
        yield from self.start_sync(r, False)

        def release(i):
            if not leader:
                return
            s, use = i % pb.STAGES, i // pb.STAGES
            self.released[(r, c)][s] = max(self.released[(r, c)][s], use)
            for cta in ([r] if MUT in ("release_own_only", "release_own_only_count_2") else [0, 1]):
                self.send_arrival(me, cta, s, use)

        it = 0
        for unit in self.units:
            if self.pending(r, c, w):
                raise ModelError(f"{who} zeroes accumulators that an unretired wgmma writes")
            self.acc[(r, c, w)] = []
            for kt in range(pb.ktiles):
                s = it % pb.STAGES
                while not self.full[r][s].try_wait((it // pb.STAGES) & 1, it // pb.STAGES, who):
                    yield WAIT
                self.issue(r, c, w, s, unit, kt)
                self.ncommit[(r, c, w)] += 1
                self.groups[(r, c)][self.ncommit[(r, c, w)] - 1].committed.add(w)
                self.events += 1
                while self.pending(r, c, w) > 1:
                    yield WAIT
                if MUT == "release_current":
                    release(it)
                elif kt > 0:
                    release(it - 1)
                it += 1
                yield STEP
            while self.pending(r, c, w) > 0:
                yield WAIT
            if MUT != "release_current":
                release(it - 1)
            # epilogue: wg_store at rows walk.m0(tile) + 64 c + ..., those < m only
            want = [(unit, kt) for kt in range(pb.ktiles)]
            if sorted(self.acc[(r, c, w)]) != want:
                raise ModelError(f"{who} stores unit {unit} with K tiles {sorted(self.acc[(r, c, w)])}, not {want}")
            row = pb.m0(unit, r) + 64 * c
            if row < pb.m:
                self.stores[(row // 128, unit % pb.n_tiles, c, w)] += 1
            yield STEP
        yield from self.end_sync(r, me)

    def run(self, max_steps=2_000_000):
        sc = self.sched
        actors = [(("P", r), self.producer(r)) for r in range(2)]
        actors += [(("C", r, c, w), self.warp(r, c, w)) for r in range(2) for c in range(2) for w in range(4)]
        n = len(actors)
        wts = [sc["cta_weight"][a[0][1]] * sc["actor_weight"].get(a[0], 1.0) for a in actors]
        alive = [True] * n
        waiting = [None] * n
        steps = 0
        while True:
            live = [i for i in range(n) if alive[i]]
            comp = self.completable()
            sources = []
            if self.copies:
                sources.append("land")
            if self.msgs:
                sources.append("deliver")
            if comp:
                sources.append("complete")
            if not live and not sources:
                break
            steps += 1
            if steps > max_steps:
                raise Hang("step limit (livelock)")
            movable = [i for i in live if waiting[i] != self.events]
            if not movable and not sources:
                bars = []
                for r in range(2):
                    for s in range(self.pb.STAGES):
                        for b in (self.full[r][s], self.empty[r][s]):
                            if b.pending != b.count or b.tx:
                                bars.append(f"{b.name} phase {b.phase} pending {b.pending}/{b.count} tx {b.tx}")
                raise Hang(f"hang: all {len(live)} live threads spin, nothing in flight; open barriers: {'; '.join(bars[:3])}")
            if sources and (not movable or self.rng.random() < sc["p_event"]):
                src = self.rng.choice(sources)
                if src == "land":
                    self.land_copy(self.rng.randrange(len(self.copies)))
                elif src == "deliver":
                    keys = list(self.msgs)
                    # arrivals to the other CTA are slower by `remote_lag`
                    wk = [1.0 if k[1] == k[0][1] else sc["remote_lag"] for k in keys]
                    self.deliver(self.rng.choices(keys, weights=wk)[0])
                else:
                    self.complete_group(self.rng.choice(comp))
                continue
            i = self.rng.choices(movable, weights=[wts[k] for k in movable])[0]
            try:
                res = next(actors[i][1])
            except StopIteration:
                alive[i] = False
                self.events += 1
                continue
            waiting[i] = self.events if res == WAIT else None
        if not all(self.exited):
            raise ModelError("a CTA never exited")
        return steps


def random_sched(rng):
    cta_w = [1.0, 1.0]
    if rng.random() < 0.6:
        cta_w[rng.randrange(2)] = rng.choice([0.3, 0.1, 0.02])  # one CTA of the pair runs slowly
    actor_w = {}
    if rng.random() < 0.5:
        r, c, w = rng.randrange(2), rng.randrange(2), rng.randrange(4)
        actor_w[("C", r, c, w)] = rng.choice([0.2, 0.03])  # one warp lags
    if rng.random() < 0.3:
        actor_w[("P", rng.randrange(2))] = rng.choice([0.2, 0.03])  # one producer lags
    return {"cta_weight": cta_w, "actor_weight": actor_w, "p_event": rng.choice([0.05, 0.2, 0.5]),
            "remote_lag": rng.choice([1.0, 0.1, 0.01])}


def run_problem(pb, seed, clusters=None, units_cut=None):
    """Simulates every cluster of the grid (or `clusters`), one random schedule each; returns the
    union of the stores and the statistics."""
    stores = collections.Counter()
    stats = collections.Counter()
    run_problem.misphase = None
    for cid in (range(pb.G) if clusters is None else clusters):
        rng = random.Random(seed * 1009 + cid)
        units = pb.units(cid)
        if units_cut:
            units = units[:units_cut]
        cl = Cluster(pb, cid, rng, random_sched(rng), units)
        cl.run()
        stores.update(cl.stores)
        stats.update(cl.stats)
        run_problem.misphase = run_problem.misphase or cl.misphase
    return stores, stats


def check_cover(pb, stores):
    """Every (row block, column tile, consumer half, warp) whose rows start below m stored once."""
    for mb in range(pb.m_tiles):
        for nb in range(pb.n_tiles):
            for c in range(2):
                if mb * 128 + 64 * c >= pb.m:
                    continue
                for w in range(4):
                    k = stores.get((mb, nb, c, w), 0)
                    if k != 1:
                        raise ModelError(f"output tile (row block {mb}, column tile {nb}) half {c} warp {w} stored {k} times")
    extra = [k for k in stores if k[0] >= pb.m_tiles]
    if extra:
        raise ModelError(f"stores outside the output: {extra[:3]}")


# ---------------------------------------------------------------------------------------------
# The launcher (seg_gemm.rs:195-212, tiles.rs:186-240 at 17be500) and the selftest's shapes.
def tma_tile(sms, m, n):
    cost = lambda bn, tenths: cdiv(cdiv(m, 128) * cdiv(n, bn), sms) * bn * tenths
    return 256 if cost(256, 9) <= cost(128, 10) else 128


def picks_multicast(m, n, sms):
    return cdiv(m, 128) * cdiv(n, 128) >= sms  # choose_tile: wide_blocks >= sms, then MC256 / MC128


def product(role, m, n_in, n_out, rank, base):
    n_valid = n_out if role == "y" else n_in
    k0 = (n_in if role == "y" else n_out) if base else 0
    ktiles0 = cdiv(k0, 64)
    return n_valid, ktiles0, ktiles0 + cdiv(rank, 64), [role == "dx", False]


SELFTEST = [(1000, 200, 72, 37, b) for b in (True, False)] + [(1024, 768, 3072, 100, b) for b in (True, False)]
SELFTEST += [(s[0], s[1], s[2], 37, b) for s in ((2500, 1000, 1160), (300, 264, 1000), (8200, 1000, 1160)) for b in (True, False)]
for (a, b_) in [(768, 3072), (3072, 768), (1024, 4096), (4096, 1024)]:
    for rk in (16, 100, 256):
        SELFTEST.append((1024, a, b_, rk, True))
    SELFTEST.append((1024, a, b_, 256, False))
# (SMs, clusters that fit): the emulator's 3, 4 and 7 SMs (its cuOccupancyMaxActiveClusters: SMs / 2)
# and an H100's 132 SMs with 66 clusters, or fewer if its GPCs' SM counts are odd.
GRIDS = [(3, 1), (4, 2), (7, 3), (132, 66), (132, 60)]


def launcher_problems():
    out = []
    for sms, slots in GRIDS:
        for (m, n_in, n_out, rank, base) in SELFTEST:
            for role in ("y", "dx"):
                n_valid, ktiles0, ktiles, nt = product(role, m, n_in, n_out, rank, base)
                if not picks_multicast(m, n_valid, sms):
                    continue
                BN = tma_tile(sms, m, n_valid)
                units = cdiv(n_valid, BN) * cdiv(cdiv(m, 128), 2)
                G = min(units, slots)  # grid = 2 * min(units, max active clusters)
                out.append(((sms, slots, role, m, n_in, n_out, rank, base), Problem(m, n_valid, BN, ktiles0, ktiles, nt, G)))
    return out


def analytic_unit_checks(pb):
    """Per unit, from the kernel's formulas: both ranks announce the same bytes, equal to the bytes
    the two producers' boxes deliver to each CTA; no box wholly outside its tensor; grid cover."""
    m_last = (pb.m - 1) // 128 * 128
    stores = collections.Counter()
    for cid in range(pb.G):
        for unit in pb.units(cid):
            n0 = pb.n0(unit)
            nn_boxes = min(pb.BN // 64, cdiv(pb.n_valid - n0, 64))
            nt_boxes = min(2, cdiv(pb.n_valid - n0, pb.BN // 2))
            for nt in set(pb.nt[s] for s in (0, 1) if (pb.ktiles0 if s == 0 else pb.ktiles - pb.ktiles0) > 0):
                exp = A_BYTES + (nt_boxes * pb.NT_BOX_BYTES if nt else nn_boxes * NN_BOX_BYTES)
                delivered = 0
                for r in range(2):
                    if nt and r < nt_boxes:
                        assert n0 + r * pb.BN // 2 < pb.n_valid
                        delivered += pb.NT_BOX_BYTES
                    if not nt:
                        for j in range(pb.BN // 64):
                            if j < nn_boxes and j % 2 == r:
                                assert n0 + 64 * j < pb.n_valid
                                delivered += NN_BOX_BYTES
                assert delivered == exp - A_BYTES, (pb, unit)
            for r in range(2):
                assert min(pb.m0(unit, r), m_last) < pb.m
                for c in range(2):
                    row = pb.m0(unit, r) + 64 * c
                    if row < pb.m:
                        for w in range(4):
                            stores[(row // 128, unit % pb.n_tiles, c, w)] += 1
    check_cover(pb, stores)


def synthetic_problems(quick):
    out = []
    for BN in (128, 256):
        for m in (100, 128, 250, 256, 300, 600, 640):  # 1, 1, 2, 2, 3, 5, 5 row blocks, ragged and not
            for last in ((8, 72, 128) if BN == 128 else (8, 64, 72, 128, 136, 200, 256)):  # width of the last N tile
                for n_tiles in (1, 2):
                    n_valid = (n_tiles - 1) * BN + last
                    for role in ("y", "dx"):
                        for kt in (1, 2, 3, 5, 8):
                            kt0 = 0 if (kt == 1 and role == "y") else (kt // 2 if role == "dx" else kt - 1)
                            nt = [role == "dx", False]
                            units = n_tiles * cdiv(cdiv(m, 128), 2)
                            for G in sorted({1, min(2, units)}):
                                out.append(Problem(m, n_valid, BN, kt0, kt, nt, G))
    rng = random.Random(7)
    rng.shuffle(out)
    return out[: len(out) // 4] if quick else out


PLANTED = {
    # name: what the bug is
    "empty_count_2": "STAGE_READERS = 2 (one CTA's consumers), releases still to both CTAs",
    "release_own_only": "consumers release only their own CTA's stage (count 4)",
    "release_own_only_count_2": "consumers release only their own CTA's stage, count 2 (a non-cluster pipeline per CTA)",
    "expect_own_half": "each producer's expect_tx counts A and its own B boxes only",
    "expect_full_tile": "expect_tx counts the whole B tile, boxes past n_valid included",
    "phantom_unclamped": "rank 1's phantom tile loads A below the last row block (m0 not clamped)",
    "nn_both_ranks_box0": "both ranks issue NN box 0",
    "nt_half_unguarded": "rank 1 issues its NT half even when it starts past n_valid",
    "mask_own": "multicast mask = this CTA only",
    "no_start_sync": "__syncthreads instead of the cluster barrier after the barrier inits",
    "no_end_sync": "no cluster barrier before exit",
    "release_current": "release(it) after wait_group 1 (the stage just issued), no tail release",
    "producer_parity": "the producer waits on empty with parity use & 1",
    "walk_stride_blocks": "units walked with stride gridDim.x instead of gridDim.x / 2",
}


def planted_cases():
    return [Problem(600, 200, 128, 2, 5, [True, False], 2), Problem(600, 200, 256, 3, 8, [True, False], 2),
            Problem(300, 328, 128, 1, 3, [False, False], 2), Problem(250, 136, 256, 0, 2, [False, False], 1),
            Problem(640, 72, 256, 2, 3, [True, False], 2), Problem(300, 200, 128, 5, 9, [True, False], 1)]


def main():
    global MUT, PHASE_ASSERT, INSTANT
    quick = "--quick" in sys.argv
    ok = True
    nsched = 2 if quick else 3

    # 1. The launcher: analytic byte counts, boxes and grid cover on every selftest product that
    # takes the multicast kernel, at the emulator's and an H100's SM counts.
    lp = launcher_problems()
    for key, pb in lp:
        analytic_unit_checks(pb)
    walks = {}
    for key, pb in lp:
        for cid in range(pb.G):
            u = pb.units(cid)
            sig = (pb.m, pb.n_valid, pb.BN, pb.ktiles0, pb.ktiles, pb.nt, pb.G, tuple(x % pb.n_tiles for x in u[:4]),
                   tuple(pb.m0(x, 1) >= pb.m for x in u[:4]))
            walks.setdefault(sig, (pb, cid))
    print(f"launcher: {len(lp)} (product, grid) pairs take mc256/mc128; byte counts, boxes and grid cover checked for each")
    print(f"  distinct cluster walks (first 4 units): {len(walks)}; ktiles {sorted({pb.ktiles for _, pb in lp})}")

    # 2. The kernel as written, both delivery modes, synthetic problems (all clusters of the grid,
    # cover checked) and the launcher's walks (first 4 units of each distinct cluster walk).
    syn = synthetic_problems(quick)
    lw = list(walks.values())
    if quick:
        lw = lw[::3]
    print(f"synthetic problems: {len(syn)} (BN 128/256, 1-5 row blocks, ragged last N tile, NN and NT, ktiles 1-8, 1-2 clusters)")
    for instant in (False, True):
        INSTANT = instant
        mode = "instant arrivals (as the emulator)" if instant else "ISA (arrivals in flight)"
        runs, fails, stats = 0, [], collections.Counter()
        for pi, pb in enumerate(syn):
            for sd in range(nsched):
                runs += 1
                try:
                    stores, st = run_problem(pb, seed=pi * 31 + sd)
                    check_cover(pb, stores)
                    stats.update(st)
                except ModelError as e:
                    fails.append((pb, str(e)))
                    break
        for wi, (pb, cid) in enumerate(lw):
            for sd in range(max(1, nsched // 2)):
                runs += 1
                try:
                    _, st = run_problem(pb, seed=5000 + wi * 31 + sd, clusters=[cid], units_cut=4)
                    stats.update(st)
                except ModelError as e:
                    fails.append((pb, str(e)))
                    break
        print(f"kernel at 17be500, {mode}: {runs} runs, {len(fails)} failures; "
              f"arrivals landing in another phase than they release: {stats['misphased arrivals']}, "
              f"complete_tx taking the tx-count below 0: {stats['negative tx-counts']}")
        if stats["misphased arrivals"]:
            print(f"    of those: {stats['early arrivals']} land before the phase they release, {stats['late arrivals']} after; "
                  f"{stats['misphased arrivals on CTA 0']} on rank 0's barriers, {stats['misphased arrivals on CTA 1']} on rank 1's")
        for pb, e in fails[:3]:
            print(f"    {pb}: {e[:200]}")
        if fails:
            ok = False
        if not instant and stats["misphased arrivals"] == 0:
            print("    (no misphased arrival this time: the witness below shows one)")

    # 3. A witness of an arrival counted in a phase other than the one it releases (legal under
    # the ISA, harmless here): the first random schedule of the synthetic problems that shows one.
    INSTANT = False
    found = None
    for pi, pb in enumerate(syn):
        for sd in range(nsched):
            _, st = run_problem(pb, seed=pi * 31 + sd)
            if st["misphased arrivals"]:
                found = (pb, pi * 31 + sd, st["misphased arrivals"], run_problem.misphase)
                break
        if found:
            break
    if found:
        print(f"witness: {found[0]}, seed {found[1]}: {found[2]} arrival(s) counted in another phase, no failure; "
              f"the first: {found[3]}")
    else:
        print("witness: no misphased arrival found")

    # 4. Planted bugs: caught with the assertions on, and by the symptom alone.
    print("planted bugs (caught with the bookkeeping assertions / by the symptom alone):")
    for name, what in PLANTED.items():
        MUT = name
        verdicts = []
        for pa in (True, False):
            PHASE_ASSERT = pa
            caught = None
            for sd in range(60):
                pb = planted_cases()[sd % len(planted_cases())]
                pb = Problem(pb.m, pb.n_valid, pb.BN, pb.ktiles0, pb.ktiles, pb.nt, pb.G)  # re-derive (walk mutation)
                try:
                    stores, _ = run_problem(pb, seed=900 + sd)
                    check_cover(pb, stores)
                except ModelError as e:
                    caught = str(e)
                    break
            verdicts.append(caught)
        PHASE_ASSERT = True
        MUT = None
        if verdicts[0] is None or verdicts[1] is None:
            ok = False
        v = lambda c: "NOT CAUGHT" if c is None else c[:150]
        print(f"  {name} ({what}):\n      assert: {v(verdicts[0])}\n      symptom: {v(verdicts[1])}")
    print("all checks as expected" if ok else "SOME CHECKS NOT AS EXPECTED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
