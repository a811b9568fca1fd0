"""Write ingest/sample_corpus/signs-catalogue.pdf: two pages of text, one embedded raster image.

The demo corpus needs a PDF with a text layer and an embedded image; writing the few PDF objects
by hand keeps the repo free of a PDF-authoring dependency. Rerun to regenerate:

    .venv/bin/python ingest/tools/make_sample_pdf.py
"""

from __future__ import annotations

import zlib
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "sample_corpus" / "signs-catalogue.pdf"

PAGES = [
    ["Signs catalogue, page 1", "", "Order code S-100: red circle, 30 cm, aluminium.",
     "Used to mark areas closed to visitors.", "Price: 24 euros each, delivered in five working days."],
    ["Signs catalogue, page 2", "", "Order code S-200: blue rectangle exit sign, 40 by 20 cm.",
     "Photo-luminescent paint keeps it visible for 60 minutes in a power cut.",
     "Price: 31 euros each. The picture on this page shows the S-200 sign."],
]


def _text_stream(lines: list[str]) -> bytes:
    ops = ["BT", "/F1 14 Tf", "72 760 Td", "18 TL"]
    for line in lines:
        safe = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"({safe}) Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1")


def main() -> None:
    img = Image.new("RGB", (96, 48), "white")
    ImageDraw.Draw(img).rectangle((6, 10, 90, 38), fill=(30, 60, 220))
    pixels = zlib.compress(img.tobytes())
    objs: list[bytes] = []
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objs.append(b"<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 >>")
    page_res = b"/Resources << /Font << /F1 7 0 R >> %s>>"
    c1 = _text_stream(PAGES[0])
    c2 = _text_stream(PAGES[1]) + b"\nq 192 0 0 96 72 520 cm /Im1 Do Q"
    objs.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] " + page_res % b"" + b" /Contents 4 0 R >>")
    objs.append(b"<< /Length %d >>\nstream\n" % len(c1) + c1 + b"\nendstream")
    objs.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] " + page_res % b"/XObject << /Im1 8 0 R >> " + b" /Contents 6 0 R >>")
    objs.append(b"<< /Length %d >>\nstream\n" % len(c2) + c2 + b"\nendstream")
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objs.append(b"<< /Type /XObject /Subtype /Image /Width 96 /Height 48 /ColorSpace /DeviceRGB "
                b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % len(pixels) + pixels + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    OUT.write_bytes(bytes(out))
    print(f"wrote {OUT} ({len(out)} bytes)")


if __name__ == "__main__":
    main()
