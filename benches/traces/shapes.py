"""Twelve more trace shapes for the hit-ratio harness, for checking a policy change against traces
it was not tuned on (BENCHMARKS.md section 2): oltp (hot index pages, skewed row lookups, range
scans), zigzag (a loop forward then back, with Zipf noise), pools (two uniform pools), multi
(a loop, a Zipf and a scan interleaved), shift (a Zipf working set that moves on; the Rust
`moving` trace of benches/traces is its twin), bursty (keys reread in bursts, popularity
drifting), web (Zipf over 2M objects whose ranks reshuffle, plus one-hit wonders); added later
(each draws after the first seven, so those stay as they were): flip (a Zipf whose top ranks
reverse), loopmix (a loop inside the cache beside a Zipf), diurnal (two Zipf populations whose
shares swing), news (items born steadily, read by age), tenants (tenants' Zipf sets coming and
going).

    python3 benches/traces/shapes.py DIR [ACCESSES [SEED]]     # DIR/<shape>.keys, ~2 min
    cargo bench --bench hit_ratio -- --only-files --trace DIR/shift.keys ... \
        --capacities 1000,5000,20000,50000
"""
import random, bisect, sys, os, math
out = sys.argv[1]; N = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
os.makedirs(out, exist_ok=True)

def zipf_cdf(n, s):
    w = [1.0 / (i + 1) ** s for i in range(n)]
    t = sum(w); c = []; a = 0.0
    for x in w:
        a += x / t; c.append(a)
    return c

def zipf(rng, cdf):
    return min(bisect.bisect_left(cdf, rng.random()), len(cdf) - 1)

def write(name, keys):
    with open(f"{out}/{name}.keys", "w") as f:
        f.write("\n".join(map(str, keys))); f.write("\n")

rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 7)
# A. oltp: hot index pages (Zipf 0.9 over 8k) about 50 %, row lookups Zipf 0.6 over 400k
#    about 32 %, range scans of 200-3000 sequential blocks from a 2M space about 10 % of the
#    accesses (a scan starts at 0.007 % of the draws and runs about 1,600 blocks).
c_idx = zipf_cdf(8000, 0.9); c_row = zipf_cdf(400_000, 0.6)
perm = list(range(400_000)); rng.shuffle(perm)
keys = []; scan = []
while len(keys) < N:
    if scan:
        keys.append(scan.pop()); continue
    r = rng.random()
    if r < 0.55: keys.append(zipf(rng, c_idx))
    elif r < 0.90: keys.append(10_000 + perm[zipf(rng, c_row)])
    elif r < 0.90007:
        s = rng.randrange(2_000_000); l = rng.randrange(200, 3000)
        scan = list(range(5_000_000 + s + l, 5_000_000 + s, -1))
    else: keys.append(zipf(rng, c_idx))
write("oltp", keys[:N])

# B. zigzag: loop forward then backward over 12k keys, plus 20 % Zipf noise over 100k.
c = zipf_cdf(100_000, 0.8); keys = []; i = 0; d = 1; L = 12_000
while len(keys) < N:
    if rng.random() < 0.2: keys.append(100_000 + zipf(rng, c)); continue
    keys.append(i); i += d
    if i == L: d = -1; i = L - 1
    if i < 0: d = 1; i = 0
write("zigzag", keys)

# C. two pools: 50 % uniform over 3k, 50 % uniform over 120k.
keys = [rng.randrange(3000) if rng.random() < 0.5 else 3000 + rng.randrange(120_000) for _ in range(N)]
write("pools", keys)

# D. multi: three programs interleaved in slices of 50-500 accesses: a loop over 6k,
#    Zipf 1.0 over 60k, a sequential scan through a 3M space.
c = zipf_cdf(60_000, 1.0); keys = []; lp = 0; sp = 0
while len(keys) < N:
    p = rng.randrange(3); n = rng.randrange(50, 500)
    for _ in range(n):
        if p == 0: keys.append(lp); lp = (lp + 1) % 6000
        elif p == 1: keys.append(10_000 + zipf(rng, c))
        else: keys.append(1_000_000 + sp); sp += 1
write("multi", keys[:N])

# E. shifting hotspot: Zipf 0.8 over 30k keys, the set jumps to fresh keys every 150k accesses,
#    with 30 % of the old set kept.
c = zipf_cdf(30_000, 0.8); keys = []; base = list(range(30_000)); nxt = 30_000
while len(keys) < N:
    for _ in range(150_000):
        keys.append(base[zipf(rng, c)])
    for j in range(len(base)):
        if rng.random() < 0.7: base[j] = nxt; nxt += 1
write("shift", keys[:N])

# F. bursty (sprite-like temporal clustering): a key is picked from a drifting Zipf over 200k,
#    then reread 0-7 times within the next ~50 accesses.
c = zipf_cdf(200_000, 0.7); keys = []; pending = []; off = 0; t = 0
while len(keys) < N:
    t += 1
    if t % 20_000 == 0: off += 5_000
    due = [p for p in pending if p[0] <= t]
    if due and rng.random() < 0.5:
        p = due[0]; pending.remove(p); keys.append(p[1]); continue
    k = (zipf(rng, c) + off) % 400_000
    keys.append(k)
    for _ in range(rng.randrange(0, 8)):
        pending.append((t + rng.randrange(1, 50), k))
    if len(pending) > 5000: pending = pending[-5000:]
write("bursty", keys[:N])

# G. web: Zipf 0.85 over 2M objects whose ranks are reshuffled gradually (5 % of the top 20k swap
#    with random objects every 50k accesses), plus 25 % one-hit wonders.
c = zipf_cdf(2_000_000, 0.85); rank = list(range(2_000_000)); keys = []; ohw = 10_000_000
while len(keys) < N:
    for _ in range(50_000):
        if rng.random() < 0.25: keys.append(ohw); ohw += 1
        else: keys.append(rank[zipf(rng, c)])
    for _ in range(1000):
        a = rng.randrange(20_000); b = rng.randrange(2_000_000); rank[a], rank[b] = rank[b], rank[a]
write("web", keys[:N])

# H. flip: Zipf 0.9 over 100k; every 200k accesses the ranks of the top 20k are reversed.
c = zipf_cdf(100_000, 0.9); perm = list(range(100_000)); keys = []
while len(keys) < N:
    for _ in range(200_000): keys.append(perm[zipf(rng, c)])
    perm[:20_000] = perm[:20_000][::-1]
write("flip", keys[:N])

# I. loopmix: 60 % Zipf 0.8 over 50k, 40 % a loop over 15k keys (a loop a 20k cache could hold).
c = zipf_cdf(50_000, 0.8); keys = []; lp = 0
while len(keys) < N:
    if rng.random() < 0.6: keys.append(100_000 + zipf(rng, c))
    else: keys.append(lp); lp = (lp + 1) % 15_000
write("loopmix", keys[:N])

# J. diurnal: two populations, Zipf 1.0 over 50k each; the first's share swings between 90 % and
#    10 % and back every 300k accesses.
c = zipf_cdf(50_000, 1.0); keys = []
for t in range(N):
    a = 0.5 + 0.4 * math.cos(2 * math.pi * t / 300_000)
    keys.append(zipf(rng, c) if rng.random() < a else 100_000 + zipf(rng, c))
write("diurnal", keys)

# K. news: an item is born every 20 accesses; an access picks an item by its age (Pareto, alpha
#    1.2, scale 20 items; an age older than every item is drawn again), or 10 % of the time an
#    evergreen page (Zipf 1.0 over 5k).
c = zipf_cdf(5_000, 1.0); keys = []; born = 1000
for t in range(N):
    if t % 20 == 0: born += 1
    if rng.random() < 0.1: keys.append(zipf(rng, c)); continue
    age = born
    while age >= born: age = int(20 * (rng.paretovariate(1.2) - 1))
    keys.append(10_000 + born - 1 - age)
write("news", keys)

# L. tenants: 50 tenants of 2k keys each (Zipf 0.9 within a tenant); 10 are active, and every
#    20k accesses one of them gives way to an idle one.
c = zipf_cdf(2_000, 0.9); active = list(range(10)); idle = list(range(10, 50)); keys = []
for t in range(N):
    if t % 20_000 == 0 and t:
        i = rng.randrange(10); j = rng.randrange(len(idle)); active[i], idle[j] = idle[j], active[i]
    keys.append(active[rng.randrange(10)] * 10_000 + zipf(rng, c))
write("tenants", keys)
