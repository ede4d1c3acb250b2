"""Writes the unpack fuzz seeds added for implied directories and long
headers (python3 gen-unpack-seeds.py, then copy seed-* to corpus/unpack):
seed-longname-ok.tar (valid 3000-byte GNU long names and link names),
seed-pax-long.tar (PAX global and extended headers: long path and link,
an xattr), seed-deep-implied.tar.zst (a file 5000 levels deep with no
directory entries, an explicit directory half-way, whiteouts), and
seed-layers.bin (40 layers in the target's CRIUSLAYERS framing).
Needs the zstd command."""
import io, struct, tarfile, subprocess

def tar_bytes(entries, fmt=tarfile.GNU_FORMAT, pax_headers=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers) as t:
        for e in entries:
            kind, name = e[0], e[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            ti.uid = ti.gid = 0
            data = b""
            if kind == "file":
                data = e[2]
                ti.mode = e[3] if len(e) > 3 else 0o644
                ti.size = len(data)
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = e[2]
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e[2]
                ti.mode = 0o777
            elif kind == "hard":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e[2]
            if len(e) > 4:
                ti.pax_headers = e[4]
            t.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()

# 1. Valid GNU long name and long link headers (3000-byte paths).
long_dir = "/".join(["l" * 100] * 30)
seed = tar_bytes([
    ("file", long_dir + "/file", b"long name\n"),
    ("hard", long_dir + "/hardlink", long_dir + "/file"),
    ("sym", "short-symlink", "/" + long_dir + "/file"),
])
open("seed-longname-ok.tar", "wb").write(seed)

# 2. PAX: global header, long path, long link name, an xattr, mtime.
pdir = "/".join(["p" * 120] * 20)
seed = tar_bytes([
    ("file", pdir + "/file", b"pax\n", 0o640, {"SCHILY.xattr.user.fuzz": "yes", "mtime": "1700000000.5"}),
    ("sym", "pax-symlink", "/" + pdir + "/file"),
    ("dir", pdir + "/sub", 0o700),
], fmt=tarfile.PAX_FORMAT, pax_headers={"comment": "global header"})
open("seed-pax-long.tar", "wb").write(seed)

# 3. A file 5000 levels deep with no directory entries (5000 implied
#    directories), one explicit directory half-way, a whiteout deep down.
deep = "/".join(["i"] * 5000)
half = "/".join(["i"] * 2500)
seed = tar_bytes([
    ("file", deep + "/leaf", b"deep\n"),
    ("dir", half, 0o700),
    ("file", half + "/.wh.gone", b""),
    ("file", half + "/.wh..wh..opq", b""),
], fmt=tarfile.PAX_FORMAT)
open("deep.tar", "wb").write(seed)
subprocess.run(["zstd", "-19", "-q", "-f", "deep.tar", "-o", "seed-deep-implied.tar.zst"], check=True)

# 4. A stack of 40 layers for the target's layer framing: a base with
#    /tmp 1777, /root 0700, a symlink, an opaque directory; layers that
#    imply directories below those, replace, white out.
layers = [tar_bytes([
    ("dir", "tmp", 0o1777),
    ("dir", "root", 0o700),
    ("dir", "opq", 0o750),
    ("file", "opq/hidden/x", b"x"),
    ("sym", "link", "/etc"),
    ("file", "gone/file", b"g"),
])]
for i in range(1, 40):
    entries = [("file", f"tmp/t{i}", b"t"), ("file", f"root/a/b{i}/c", b"r")]
    if i == 5:
        entries += [("file", "opq/.wh..wh..opq", b""), ("dir", "opq", 0o755)]
    if i == 6:
        entries += [("file", "opq/hidden/y", b"y")]
    if i == 7:
        entries += [("file", "link/passwd", b"evil")]
    if i == 8:
        entries += [("file", ".wh.gone", b"")]
    if i == 9:
        entries += [("file", "gone/again/file", b"a")]
    if i == 10:
        entries += [("file", "root", b"now a file")]
    if i == 11:
        entries += [("file", "root/again/x", b"x")]
    layers.append(tar_bytes(entries))
out = b"CRIUSLAYERS" + b"".join(struct.pack("<I", len(l)) + l for l in layers)
open("seed-layers.bin", "wb").write(out)

def trim(b):
    with tarfile.open(fileobj=io.BytesIO(b)) as t:
        end = 0
        for m in t.getmembers():
            end = max(end, m.offset_data + (m.size + 511) // 512 * 512)
    return b[:end] + b"\0" * 1024

layers = [trim(l) for l in layers]
out = b"CRIUSLAYERS" + b"".join(struct.pack("<I", len(l)) + l for l in layers)
open("seed-layers.bin", "wb").write(out)
for f in ["seed-longname-ok.tar", "seed-pax-long.tar"]:
    data = open(f, "rb").read()
    open(f, "wb").write(trim(data))
