"""Find what in data.path would hang DVC or stop a stage: FIFOs, sockets, devices, link loops, dangling links.

    python -m tools.check_data_path [PATH]      # PATH defaults to data.path in params.yaml

DVC hashes data.path before any stage runs, so the stages can't refuse such files in time: DVC opens
a FIFO (a named pipe) to hash it and waits for a writer for ever, and `dvc status` and `dvc repro` hang
with it. Run this when they do. It prints one line per file it finds and exits 1, or exits 0 when
there is none. The download stage itself skips or stops at each such file (data.folder.bad_images).
"""
import os
import sys

from mnist_cnn.errors import UserError
from mnist_cnn.images import BadImage, SpecialFile, check_regular_file, printable
from mnist_cnn.params import load_params


def problem(path):
    """Why path can't be part of a dataset (images.check_regular_file's one line), or None."""
    try:
        check_regular_file(path)
    except SpecialFile as e:
        return f"{e}; DVC blocks on it for ever while it hashes data.path"
    except BadImage as e:
        return str(e)
    return None


def scan(root):
    """(path, problem) for every file under root that DVC or the stages can't read."""
    found = []
    for folder, dirs, files in os.walk(root):  # links to folders are not followed, as DVC doesn't
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            reason = problem(path)
            if reason:
                found.append((path, reason))
    return found


def main(argv):
    if argv:
        root = argv[0]
    else:
        try:
            root = load_params()["data"]["path"]
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not os.path.exists(root):
        print(f"{printable(root)}: no such file or folder")
        return 0
    if os.path.isdir(root):
        found = scan(root)
    else:
        found = [(root, reason) for reason in [problem(root)] if reason]
    for path, reason in found:
        print(f"{printable(path)}: {reason}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
