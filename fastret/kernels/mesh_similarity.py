"""Depth-weighted MeSH label similarity (BioHiCL's SimL) between two batches of documents.

Document p's labels expand to the set N_p of MeSH tree nodes above them (`fastret.MeshTree.encode`);
node c weighs w_c = ln(depth(c) + 1). With the weighted multi-hot vector v_p[c] = w_c for c in N_p:

    SimL(p, q) = <v_p, v_q> / (||v_p|| ||v_q||)
               = sum_{c in N_p & N_q} w_c^2 / (sqrt(sum_{c in N_p} w_c^2) * sqrt(sum_{c in N_q} w_c^2))

and SimL(p, q) = 0 when N_p or N_q is empty (no known label). Values lie in [0, 1] (the result is
clamped to 1 against rounding); against itself (labels_b=None) the matrix is exactly symmetric
and its diagonal exactly 1 for every document with labels.

Shapes and dtypes: each batch is an `EncodedLabels` (or a (nodes, weights) pair): nodes int32
[B, L] holding each row's node ids strictly ascending, then -1 padding; weights float32 [B, L]
(w_c beside each node). Output float32 [A, B] on the inputs' device.

The reference (`mesh_similarity_ref`) builds the dense weighted multi-hot rows and does one matmul.
The Triton kernel never builds them: one program per [BLOCK, BLOCK] tile of the output, in which
every (a, b) pair merges its two sorted node lists in lock step (two pointers; equal ids add
w_a * w_b = w_c^2 and advance both, otherwise the smaller id advances), so a pair costs at most
len_a + len_b steps whatever the tree size, and lists of any length work. The row norms
sqrt(sum w^2) are computed before the launch (O(B L)); the kernel divides by them. With
labels_b=None only the tiles on and above the diagonal run, and each writes its mirror image too.

Dispatch: a CUDA tensor runs the Triton kernel; a CPU tensor runs `mesh_similarity_ref` (plain
torch), or the Triton kernel in Triton's interpreter when TRITON_INTERPRET=1 (how the tests check
the kernel on machines without a GPU).
"""

import contextlib
from typing import Optional, Protocol, Tuple, Union, runtime_checkable

import torch

from ._triton import require_triton, tl, triton, use_triton


@runtime_checkable
class EncodedLabelBatch(Protocol):
    """What the kernel needs of `fastret.mesh.EncodedLabels` (kernels import nothing from the package):
    padded node ids, their weights, and the fingerprint of the tree that numbered the nodes."""

    nodes: torch.Tensor
    weights: torch.Tensor
    tree_id: str


Labels = Union[EncodedLabelBatch, Tuple[torch.Tensor, torch.Tensor]]

# Output tile [BLOCK, BLOCK] per program. On a GPU the merge is latency-bound (every step waits on
# a load from L1), so many small tiles in flight beat a few big ones: 16 x 16 pairs over 2 warps
# (4 independent merges per thread). Triton's interpreter costs per operation, not per element,
# so it runs bigger tiles (the kernel code is the same; only the constexpr differs).
_TILE_CUDA = (16, 2)  # (BLOCK_A = BLOCK_B, num_warps)
_TILE_INTERPRETER = (32, 1)
_MAX_GRID_Y = 65535  # CUDA limit on grid axis 1 (axis 0 takes 2**31 - 1)


# ------------------------------------------------------------------------------------- reference


def mesh_similarity_ref(labels_a: Labels, labels_b: Optional[Labels] = None) -> torch.Tensor:
    """Depth-weighted MeSH cosine in plain torch: the reference the kernel must match.

    Builds the dense weighted multi-hot rows V_a [A, C] and V_b [B, C] and returns
    V_a V_b^T / (||V_a|| ||V_b||^T) (0 where a row has no node), accumulated in float64. The
    columns are the C distinct nodes present in either batch rather than all n_nodes of the tree:
    the other columns are zero in every row and add nothing, and this keeps the rows small (a
    batch of 512 abstracts touches ~7,000 of MeSH 2015's 56,341 nodes).

    Args:
        labels_a: `EncodedLabels` from `MeshTree.encode`, or a (nodes int32/int64 [A, La],
            weights float [A, La]) pair in the same layout.
        labels_b: the same for the other batch [B, Lb]; None compares labels_a with itself.

    Returns:
        float32 [A, B] in [0, 1] on the inputs' device.

    Raises:
        TypeError / ValueError: see `mesh_similarity`.
    """
    (na, wa), (nb, wb), same = _check_inputs(labels_a, labels_b)
    return _similarity_ref(na, wa, nb, wb, same)


def _similarity_ref(na, wa, nb, wb, same: bool) -> torch.Tensor:
    A, B = na.shape[0], nb.shape[0]
    dev = na.device
    valid_a, valid_b = na >= 0, nb >= 0
    present = na[valid_a] if same else torch.cat([na[valid_a], nb[valid_b]])
    columns, inverse = torch.unique(present, return_inverse=True)  # the C nodes present, sorted
    C = columns.numel()
    ka = int(valid_a.sum())
    dense_a = torch.zeros((A, C), dtype=torch.float64, device=dev)  # v_a[p, c] = w_c
    dense_a[valid_a.nonzero(as_tuple=True)[0], inverse[:ka]] = wa[valid_a].double()
    if same:
        dense_b = dense_a
    else:
        dense_b = torch.zeros((B, C), dtype=torch.float64, device=dev)
        dense_b[valid_b.nonzero(as_tuple=True)[0], inverse[ka:]] = wb[valid_b].double()
    dot = dense_a @ dense_b.T  # [A, B]
    norm_a = dense_a.norm(dim=1)
    norm_b = norm_a if same else dense_b.norm(dim=1)
    denom = norm_a[:, None] * norm_b[None, :]
    sim = torch.where(denom > 0, dot / torch.where(denom > 0, denom, 1.0), 0.0).clamp(max=1.0)
    if same:
        sim = (sim + sim.T) * 0.5  # exactly symmetric, as the kernel
        sim.diagonal().copy_((norm_a > 0).double())
    return sim.float()


# --------------------------------------------------------------------------------------- kernels


@triton.jit
def _mesh_similarity_kernel(
    NA,  # [A, LA] int32 node ids, each row ascending then -1 (any row stride, unit column stride)
    WA,  # [A, LA] float32 weights
    NB,  # [B, LB] int32
    WB,  # [B, LB] float32
    LEN_A,  # [A] int32 valid entries per row
    LEN_B,  # [B] int32
    NORM_A,  # [A] float32 ||v_a||
    NORM_B,  # [B] float32 ||v_b||
    OUT,  # [A, B] float32 out (row stride stride_o, unit column stride)
    A,
    B,
    stride_na,
    stride_wa,
    stride_nb,
    stride_wb,
    stride_o,
    SYMMETRIC: tl.constexpr,  # b is a: compute tiles with pid_b >= pid_a, write each twice
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    # grid (cdiv(A, BLOCK_A), cdiv(B, BLOCK_B)): program (i, j) computes OUT tile [BLOCK_A, BLOCK_B]
    pid_a = tl.program_id(0)
    pid_b = tl.program_id(1)
    if (not SYMMETRIC) or (pid_b >= pid_a):
        rows_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)  # [BLOCK_A]
        rows_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B]
        ok_a = rows_a < A
        ok_b = rows_b < B
        len_a = tl.load(LEN_A + rows_a, mask=ok_a, other=0)  # [BLOCK_A]
        len_b = tl.load(LEN_B + rows_b, mask=ok_b, other=0)  # [BLOCK_B]
        len_a2 = len_a[:, None] + tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.int32)  # [BLOCK_A, BLOCK_B]
        len_b2 = len_b[None, :] + tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.int32)
        na_row = NA + rows_a.to(tl.int64)[:, None] * stride_na  # [BLOCK_A, 1] row starts
        wa_row = WA + rows_a.to(tl.int64)[:, None] * stride_wa
        nb_row = NB + rows_b.to(tl.int64)[None, :] * stride_nb  # [1, BLOCK_B]
        wb_row = WB + rows_b.to(tl.int64)[None, :] * stride_wb

        # One sorted merge per (a, b) pair, all pairs of the tile in lock step: ia / ib point into
        # the two lists, cur_a / cur_b hold the ids there. Equal ids are a shared node (add
        # w_a * w_b, which is w_c^2, and advance both); otherwise the smaller side advances. An
        # exhausted list reads as a sentinel above every id (different on the two sides, so two
        # exhausted lists never "match"), and every pair is done after len_a + len_b steps.
        ia = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.int32)  # [BLOCK_A, BLOCK_B]
        ib = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.int32)
        cur_a = tl.load(na_row + ia, mask=ia < len_a2, other=2147483647)  # [BLOCK_A, BLOCK_B]
        cur_b = tl.load(nb_row + ib, mask=ib < len_b2, other=2147483646)
        acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
        n_steps = tl.max(len_a, axis=0) + tl.max(len_b, axis=0)  # this tile's longest merge
        for _ in range(0, n_steps):
            hit = cur_a == cur_b  # [BLOCK_A, BLOCK_B]
            w_a = tl.load(wa_row + ia, mask=hit, other=0.0)
            w_b = tl.load(wb_row + ib, mask=hit, other=0.0)
            acc += w_a * w_b
            adv_a = cur_a <= cur_b
            adv_b = cur_b <= cur_a
            ia += adv_a.to(tl.int32)
            ib += adv_b.to(tl.int32)
            next_a = tl.load(na_row + ia, mask=adv_a & (ia < len_a2), other=2147483647)
            next_b = tl.load(nb_row + ib, mask=adv_b & (ib < len_b2), other=2147483646)
            cur_a = tl.where(adv_a, next_a, cur_a)
            cur_b = tl.where(adv_b, next_b, cur_b)

        norm_a = tl.load(NORM_A + rows_a, mask=ok_a, other=0.0)  # [BLOCK_A]
        norm_b = tl.load(NORM_B + rows_b, mask=ok_b, other=0.0)  # [BLOCK_B]
        denom = norm_a[:, None] * norm_b[None, :]  # [BLOCK_A, BLOCK_B]
        safe = tl.where(denom > 0, denom, 1.0)
        # IEEE division, as torch; `/` is approximate on CUDA
        sim = tl.where(denom > 0, tl.minimum(tl.math.div_rn(acc, safe), 1.0), 0.0)
        ok = ok_a[:, None] & ok_b[None, :]
        out_ab = OUT + rows_a.to(tl.int64)[:, None] * stride_o + rows_b[None, :]
        if SYMMETRIC:
            diag = rows_a[:, None] == rows_b[None, :]
            sim = tl.where(diag, tl.where(denom > 0, 1.0, 0.0), sim)
            # the upper triangle here, its mirror image below: every entry written once, from the
            # same value, so the result is exactly symmetric
            tl.store(out_ab, sim, mask=ok & (rows_a[:, None] <= rows_b[None, :]))
            out_ba = OUT + rows_b.to(tl.int64)[None, :] * stride_o + rows_a[:, None]
            tl.store(out_ba, sim, mask=ok & (rows_a[:, None] < rows_b[None, :]))
        else:
            tl.store(out_ab, sim, mask=ok)


# ------------------------------------------------------------------------------------- launchers


def _row_stats(nodes: torch.Tensor, weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """int32 [R] valid entries per row, float32 [R] ||v|| = sqrt(sum of w^2 over them)."""
    valid = nodes >= 0
    lengths = valid.sum(dim=1, dtype=torch.int32)
    w = torch.where(valid, weights, 0.0)
    return lengths, torch.sqrt((w * w).sum(dim=1))


def _mesh_similarity_triton(na, wa, nb, wb, same: bool) -> torch.Tensor:
    """Launch the kernel. na/nb int32 [A, La]/[B, Lb], wa/wb float32, unit column stride."""
    A, B = na.shape[0], nb.shape[0]
    dev = na.device
    block, num_warps = _TILE_CUDA if dev.type == "cuda" else _TILE_INTERPRETER
    grid = (triton.cdiv(A, block), triton.cdiv(B, block))
    if grid[1] > _MAX_GRID_Y:
        raise RuntimeError(
            f"mesh_similarity supports up to {_MAX_GRID_Y * block} documents in labels_b, got {B}; "
            "split labels_b into chunks (labels[i:j]) and concatenate the results"
        )
    len_a, norm_a = _row_stats(na, wa)
    len_b, norm_b = (len_a, norm_a) if same else _row_stats(nb, wb)
    out = torch.empty((A, B), dtype=torch.float32, device=dev)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _mesh_similarity_kernel[grid](
            na, wa, nb, wb, len_a, len_b, norm_a, norm_b, out, A, B,
            na.stride(0), wa.stride(0), nb.stride(0), wb.stride(0), out.stride(0),
            SYMMETRIC=same, BLOCK_A=block, BLOCK_B=block, num_warps=num_warps,
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------ public API


def mesh_similarity(labels_a: Labels, labels_b: Optional[Labels] = None) -> torch.Tensor:
    """Depth-weighted cosine similarity of MeSH label sets (BioHiCL's SimL), [A, B].

    SimL(p, q) = <v_p, v_q> / (||v_p|| ||v_q||) for the weighted multi-hot vectors over the MeSH
    tree nodes above each document's labels (node weight ln(depth + 1)); 0 when either document
    has no known label. Matches `mesh_similarity_ref` to float32 rounding (~1e-7).

    Args:
        labels_a: `EncodedLabels` from `MeshTree.encode` (A documents), or a (nodes, weights) pair
            in its layout: nodes int32/int64 [A, La], each row's node ids strictly ascending then
            -1 padding; weights float [A, La], finite and >= 0 (usually ln(depth + 1)).
        labels_b: the same for B documents, encoded with the same tree, on the same device; None
            compares labels_a with itself (B = A: exactly symmetric, diagonal 1 for labelled rows,
            and half the work).

    Returns:
        float32 [A, B] in [0, 1], on the inputs' device.

    Raises:
        TypeError: an input is neither EncodedLabels nor a (nodes, weights) pair of tensors, or a
            tensor has the wrong dtype.
        ValueError: wrong ranks or shapes, different devices, batches from different trees, or a
            (nodes, weights) pair that breaks the layout (unsorted or repeated ids, padding before
            an id, ids below -1, negative or non-finite weights).
        RuntimeError: a CUDA tensor (or TRITON_INTERPRET=1) without triton installed; more than
            1,048,560 documents in labels_b.
    """
    (na, wa), (nb, wb), same = _check_inputs(labels_a, labels_b)
    A, B = na.shape[0], nb.shape[0]
    if A == 0 or B == 0 or na.shape[1] == 0 or nb.shape[1] == 0:
        return torch.zeros((A, B), dtype=torch.float32, device=na.device)  # nothing to compare
    if use_triton(na.device):
        require_triton("mesh_similarity", na.device, _mesh_similarity_kernel)
        return _mesh_similarity_triton(na, wa, nb, wb, same)
    return _similarity_ref(na, wa, nb, wb, same)


def _check_inputs(labels_a, labels_b):
    """Validate both batches; returns (na, wa), (nb, wb) as int32 / float32 with unit column
    stride, and whether b is a."""
    a = _unpack(labels_a, "labels_a")
    if labels_b is None:
        return a, a, True
    b = _unpack(labels_b, "labels_b")
    if a[0].device != b[0].device:
        raise ValueError(
            f"labels_a is on {a[0].device} but labels_b on {b[0].device}; move both to one device "
            "(EncodedLabels.to(device))"
        )
    if isinstance(labels_a, EncodedLabelBatch) and isinstance(labels_b, EncodedLabelBatch):
        if labels_a.tree_id != labels_b.tree_id:
            raise ValueError(
                "labels_a and labels_b were encoded with different MeSH trees (tree_id "
                f"{labels_a.tree_id} vs {labels_b.tree_id}), so their node ids do not correspond; "
                "encode both with the same MeshTree"
            )
    return a, b, False


def _unpack(labels, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(labels, EncodedLabelBatch):
        # built by MeshTree.encode (or checked by EncodedLabels itself for dtypes and shapes): the
        # layout holds by construction, so no content check and no device synchronisation here
        nodes, weights = labels.nodes, labels.weights
        trusted = True
    elif isinstance(labels, (tuple, list)) and len(labels) == 2 and all(isinstance(t, torch.Tensor) for t in labels):
        nodes, weights = labels
        trusted = False
    else:
        raise TypeError(
            f"{name} must be the EncodedLabels from MeshTree.encode or a (nodes, weights) pair of "
            f"tensors, got {type(labels).__name__}"
        )
    if nodes.ndim != 2 or weights.ndim != 2:
        raise ValueError(
            f"{name}: nodes and weights must be [B, L], got shapes {tuple(nodes.shape)} and "
            f"{tuple(weights.shape)}; for one document pass [1, L] tensors"
        )
    if nodes.shape != weights.shape:
        raise ValueError(
            f"{name}: nodes {tuple(nodes.shape)} and weights {tuple(weights.shape)} must have one shape"
        )
    if nodes.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: nodes must be int32 or int64 node ids, got {nodes.dtype}")
    if not weights.is_floating_point():
        raise TypeError(f"{name}: weights must be a floating-point tensor, got {weights.dtype}")
    if weights.device != nodes.device:
        raise ValueError(f"{name}: nodes are on {nodes.device} but weights on {weights.device}")
    if not trusted and nodes.numel() > 0:
        _check_layout(nodes, weights, name)
    nodes = nodes.to(torch.int32)  # in range: checked above (or int32 already)
    weights = weights.to(torch.float32)
    if nodes.shape[1] > 1 and nodes.stride(1) != 1:
        nodes = nodes.contiguous()
    if weights.shape[1] > 1 and weights.stride(1) != 1:
        weights = weights.contiguous()
    return nodes, weights


def _check_layout(nodes: torch.Tensor, weights: torch.Tensor, name: str) -> None:
    valid = nodes >= 0
    problems = []
    if bool((nodes < -1).any()):
        problems.append("ids below -1 (padding is -1)")
    if nodes.dtype == torch.int64 and bool((nodes > torch.iinfo(torch.int32).max).any()):
        problems.append("ids beyond int32")
    if nodes.shape[1] > 1:
        if bool((~valid[:, :-1] & valid[:, 1:]).any()):
            problems.append("padding (-1) before a node id: padding goes at the end of each row")
        both = valid[:, :-1] & valid[:, 1:]
        if bool((both & (nodes[:, 1:] <= nodes[:, :-1])).any()):
            problems.append("node ids not strictly ascending within a row (unsorted or repeated)")
    w = weights[valid]
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        problems.append("negative or non-finite weights")
    if problems:
        raise ValueError(
            f"{name} breaks the label layout: {'; '.join(problems)}; build it with MeshTree.encode, "
            "or give each row its node ids sorted ascending and unique, then -1 padding"
        )
