"""How pure are groups of near files? The grouping behind train.pseudo_families, on the study's features.

Exact words TF-IDF (IDF^2 over the files grouped) of the files of a manifest's known families, each file's 10
nearest; for k in (1, 3, 5, 10) and a cosine threshold, one-way and mutual links, connected components: how
many groups, how large, purity (files in a group whose majority is their family), pair precision / recall.
Optionally writes one grouping as a manifest (K, TAU, OUT in the environment) to train on, as the study did
before the product grouped files itself.

  python studies/unseen_families/pseudo_groups.py [KEEP_SMALLEST_IDS]   (0 = every word)
"""
import csv, os, sys, time
import numpy as np, scipy.sparse as sp
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE); sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
import harness as H
from scipy.sparse.csgraph import connected_components

fams = {r["path"]: r["family"] for r in csv.DictReader(open(os.environ.get("MANIFEST", "/work/p22/m15.csv")))}
c = H.load(os.environ.get("FEAT", "/work/studies22/feat"), families=fams)
print(c.describe())
known = np.flatnonzero(c.role != "unseen")
cut = int(sys.argv[1]) if len(sys.argv) > 1 else 0
sets = [np.sort(np.asarray(t, np.uint64))[:cut] if cut else t for t in c.raw["tok"]]
x, _ = H.csr([sets[i] for i in known])
w = H.idf(x, power=2.0)
X = H.tfidf(x, w)
t0 = time.time()
S = (X @ X.T).toarray(); np.fill_diagonal(S, -1)
print("sims", time.time() - t0)
fam = c.codes[known]
n = len(known)
K = 10
top = np.argpartition(-S, K, axis=1)[:, :K]
topsim = np.take_along_axis(S, top, 1)
same_pairs_total = sum(v * (v - 1) / 2 for v in np.bincount(fam))
def report(name, rows, cols):
    g = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    k, lab = connected_components(g, directed=False)
    sizes = np.bincount(lab)
    # purity: majority family share per cluster
    pur = 0
    for cl in np.unique(lab):
        m = fam[lab == cl]; pur += np.bincount(m).max()
    # pair precision/recall
    ct = {}
    for a, b in zip(lab, fam): ct[(a, b)] = ct.get((a, b), 0) + 1
    tp = sum(v * (v - 1) / 2 for v in ct.values())
    pp = sum(v * (v - 1) / 2 for v in sizes)
    print(f"{name:40s} clusters {k:6d} singletons {(sizes==1).sum():6d} max {sizes.max():5d} purity {pur/n:.3f} "
          f"pairP {tp/max(pp,1):.3f} pairR {tp/same_pairs_total:.3f} nonsingleton-files {(sizes[lab]>1).mean():.3f}")
for k in (1, 3, 5, 10):
    for tau in (0.0, 0.2, 0.4):
        r = np.repeat(np.arange(n), k); cc = top[:, :k].ravel() if k < K else top.ravel()
        # order top by sim
        order = np.argsort(-topsim, axis=1)
        cc = np.take_along_axis(top, order, 1)[:, :k].ravel(); ss = np.take_along_axis(topsim, order, 1)[:, :k].ravel()
        keep = ss >= tau
        report(f"top{k} tau{tau}", r[keep], cc[keep])
        # mutual
        A = sp.csr_matrix((np.ones(keep.sum()), (r[keep], cc[keep])), shape=(n, n))
        M = A.multiply(A.T).tocoo()
        report(f"mutual top{k} tau{tau}", M.row, M.col)
# write the manifest of one choice
if os.environ.get("OUT"):
    k, tau = int(os.environ.get("K", 5)), float(os.environ.get("TAU", 0.2))
    order = np.argsort(-topsim, axis=1)
    cc = np.take_along_axis(top, order, 1)[:, :k].ravel(); ss = np.take_along_axis(topsim, order, 1)[:, :k].ravel()
    r = np.repeat(np.arange(n), k); keep = ss >= tau
    g = sp.coo_matrix((np.ones(keep.sum()), (r[keep], cc[keep])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    with open(os.environ["OUT"], "w", newline="") as f:
        wr = csv.writer(f, quoting=csv.QUOTE_ALL); wr.writerow(["path", "family"])
        for i, l in zip(known, lab):
            wr.writerow([c.raw["path"][i], f"pseudo-{l}"])
    print("written", n)
