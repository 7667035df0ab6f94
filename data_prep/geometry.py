"""One training matrix for a folder of fastMRI files of mixed geometry: readout oversampling, matrix width, coils.

A real fastMRI folder is not uniform: multi-coil k-space is (slices, coils, 640, W) with the readout (rows, H)
2x oversampled (the ``reconstruction_rss`` is the 320 x 320 centre of the image), the phase-encode width W
varies between volumes (320, 368, 372, 396, ...) and so does the number of coils. ``prep`` brings every slice
to one training matrix (Ht, Wt) before the measurement model (``mri_diffusion.measurement``) conditions it:

readout (rows, H; always fully sampled): **image domain**. Inverse 1-D FFT along the readout, keep the centred
  ``readout_extent`` rows (the header's reconSpace x: this removes the readout oversampling), then the centred
  Ht rows of those (one centred crop of both, ``physics.views.centre_slices``), FFT back. Each phase-encode line
  keeps only its own data, so a measured line stays measured and an unmeasured one stays zero; the unitary 1-D
  FFTs make the crop a partial isometry (white noise keeps its level per entry). The readout is never padded: a
  file whose readout extent is below Ht is refused.

phase encode (columns, W; the axis a 1-D mask samples): **k-space domain**. The centred Wt columns are cropped
  (W > Wt: the outermost measured lines are dropped, i.e. a lower resolution along W) or the W measured columns
  are placed at the centre of Wt zero columns (W < Wt: sinc interpolation of the image; the added columns were
  never measured, so the slice's mask is 0 there and so is its density: ``support``). No measured k-space value
  is interpolated. Cropping or padding the *image* along W instead (a phase field-of-view change) would make
  every new k-space column a mix of measured ones: harmless for a fully sampled file, whose retrospective mask is
  drawn after the geometry change, but for a file with its own mask (undersampled data) it turns unmeasured
  columns into mixtures of measured ones and the 1-D mask no longer describes the data. One rule serves both
  kinds of file. The price: the same anatomy occupies Wt / W as many columns as at the file's own matrix
  (fastMRI widths differ by their phase field of view at one pixel size), recorded per file as ``pe_scale``; a
  factor beyond :data:`MAX_PE_SCALE` is refused.

coils: compressed by the measurement model to ``virtual_coils`` (SVD, the phase reference rule of ``recon``);
  a file with fewer coils than that is refused (no coil is invented).

Default training matrix (no ``--matrix``), from the headers: Ht = the smallest readout extent among the files
(every file is only cropped along the readout, which removes field of view, not resolution), Wt = the largest
width (every narrower file is zero-padded in k-space: no measured line is dropped).

Refusals name the file and the reason (:func:`plan_file` returns the reason instead of a plan); ``prep`` lists
them and exits non-zero unless asked to skip them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mri_diffusion.physics.fft import fft1c, ifft1c
from mri_diffusion.physics.views import centre_slices

from .fastmri_h5 import Volume

#: Largest allowed rescaling of the anatomy along the phase encode by the k-space crop/pad (max(W/Wt, Wt/W)).
MAX_PE_SCALE = 1.5

RULES = {
    "readout": "image domain: inverse 1-D FFT along the readout, centred crop to the header's reconSpace x "
               "(oversampling removal) and to the training H, FFT back; never padded",
    "phase_encode": "k-space domain: centred crop of the measured columns (W > Wt, lower resolution) or "
                    "zero-padding at the centre of Wt columns (W < Wt, sinc interpolation; padded columns "
                    "unmeasured: mask and density 0); no measured value is interpolated",
    "default_matrix": "Ht = smallest readout extent (reconSpace x, at most the k-space rows), Wt = largest width",
    "coils": "SVD compression to the virtual coil count (measurement model, coil-0 phase reference of U[0]); "
             "files with fewer coils are refused",
}


def readout_extent(vol: Volume) -> int:
    """Rows that carry the reconstructed field of view: the header's reconSpace x (at most the k-space rows);
    the k-space rows when there is no header."""
    H = vol.shape[0]
    if vol.header is None:
        return H
    return max(1, min(int(vol.header.recon_size[0]), H))


def default_matrix(vols: list[Volume]) -> tuple[int, int]:
    """(Ht, Wt) from the headers: the smallest readout extent and the largest width (module doc)."""
    return min(readout_extent(v) for v in vols), max(v.shape[1] for v in vols)


@dataclass(frozen=True)
class FilePlan:
    """How one file's slices reach the training matrix: k-space (C, H, W) -> (C, Ht, Wt).

    ``rows``: centred readout rows kept (image domain); ``cols``: centred columns kept (crop) or the centred
    block of the Wt columns that holds the W measured ones (pad)."""

    kspace_shape: tuple[int, int]
    matrix: tuple[int, int]
    readout_extent: int

    @property
    def identity(self) -> bool:
        return tuple(self.kspace_shape) == tuple(self.matrix)

    @property
    def pe_scale(self) -> float:
        """Columns the anatomy spans in the training matrix per column of the file's own matrix: Wt / W."""
        return self.matrix[1] / self.kspace_shape[1]

    def apply(self, k: torch.Tensor) -> torch.Tensor:
        """k-space (..., H, W) -> (..., Ht, Wt); the identity (same tensor) when the geometry already matches."""
        (H, W), (Ht, Wt) = self.kspace_shape, self.matrix
        if tuple(k.shape[-2:]) != (H, W):
            raise ValueError(f"plan for k-space (.., {H}, {W}) applied to shape {tuple(k.shape)}")
        if Ht != H:
            k = fft1c(ifft1c(k, dim=-2)[..., centre_slices(H, Ht), :], dim=-2)
        if Wt < W:
            k = k[..., centre_slices(W, Wt)]
        elif Wt > W:
            out = k.new_zeros((*k.shape[:-1], Wt))
            out[..., centre_slices(Wt, W)] = k
            k = out
        return k

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """A file's own 1-D mask (W,) -> (Wt,): cropped like the columns, zeros on padded columns."""
        W, Wt = self.kspace_shape[1], self.matrix[1]
        if Wt <= W:
            return np.ascontiguousarray(mask[centre_slices(W, Wt)])
        out = np.zeros(Wt, mask.dtype)
        out[centre_slices(Wt, W)] = mask
        return out

    def support(self) -> np.ndarray | None:
        """(Wt,) float32 with 1 on measured columns and 0 on padded ones; None when nothing is padded."""
        W, Wt = self.kspace_shape[1], self.matrix[1]
        if Wt <= W:
            return None
        s = np.zeros(Wt, np.float32)
        s[centre_slices(Wt, W)] = 1
        return s

    def describe(self) -> dict:
        """What was done, for the manifest."""
        (H, W), (Ht, Wt) = self.kspace_shape, self.matrix
        e = self.readout_extent
        if Ht == H:
            readout = "kept"
        elif e == H:
            readout = f"image-domain crop {H} -> {Ht}"
        elif e == Ht:
            readout = f"oversampling removed: image-domain crop {H} -> {e} (reconSpace x)"
        else:
            readout = f"oversampling removed: image-domain crop {H} -> {e} (reconSpace x), then -> {Ht}"
        pe = ("kept" if W == Wt else f"k-space crop {W} -> {Wt} (outer {W - Wt} measured columns dropped)"
              if Wt < W else f"k-space zero-pad {W} -> {Wt} ({Wt - W} unmeasured columns, mask 0)")
        return {"kspace_shape": [H, W], "matrix": [Ht, Wt], "readout_extent": e, "readout": readout, "phase_encode": pe, "pe_scale": round(self.pe_scale, 6),
                "readout_oversampling": round(H / e, 6)}


def plan_file(vol: Volume, matrix: tuple[int, int], virtual_coils: int | None) -> FilePlan | str:
    """The plan of ``vol`` for the training ``matrix``, or the reason it cannot be brought there."""
    (H, W), (Ht, Wt) = vol.shape, matrix
    e = readout_extent(vol)
    if e < Ht:
        over = f" after removing the readout oversampling ({H} rows)" if e < H else ""
        return (f"readout field of view holds {e} rows{over}, the training matrix needs {Ht} (prep crops the "
                f"readout, never pads it)")
    f = max(W / Wt, Wt / W)
    if f > MAX_PE_SCALE:
        return (f"phase-encode width {W} would be {'cropped' if W > Wt else 'padded'} to {Wt} in k-space: the "
                f"anatomy would be rescaled by {f:.2f} (> {MAX_PE_SCALE}) along the phase encode")
    if virtual_coils and vol.num_coils < virtual_coils:
        return f"{vol.num_coils} coil(s), fewer than the {virtual_coils} virtual coils of the set"
    return FilePlan((H, W), (int(Ht), int(Wt)), e)
