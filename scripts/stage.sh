#!/usr/bin/env bash
# Lays out an installation under ROOT from built binaries in BIN_DIR: the
# same tree for the dist tarball and for `make install`.
#
#   scripts/stage.sh BIN_DIR ROOT DOC_DIR
#
# ROOT/bin/{duplicator,duplicator-testserver,duplicator-testclient}
# ROOT/share/man/man1/<each>.1                 (scripts/manpage.py, from the binaries)
# ROOT/share/bash-completion/completions/<each> \
# ROOT/share/zsh/site-functions/_<each>          > from `<each> --generate-completion-script`
# ROOT/share/fish/vendor_completions.d/<each>.fish/
# DOC_DIR/{LICENSE,README.md,BENCHMARKS.md,RELIABILITY.md}
# DOC_DIR/docs/*.md                            (the README's links work from DOC_DIR)
# Man pages and completions come from the binaries being installed, so they
# cannot drift from the argument parser.
set -euo pipefail
bin_dir=$1 root=$2 doc_dir=$3
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/.*static let version = "\(.*\)"/\1/p' "$here/Sources/Duplicator/Lifecycle/BuildInfo.swift")
programs=(duplicator duplicator-testserver duplicator-testclient)

install -d "$root/bin" "$root/share/man/man1" "$root/share/bash-completion/completions" \
           "$root/share/zsh/site-functions" "$root/share/fish/vendor_completions.d" "$doc_dir"
for program in "${programs[@]}"; do
    install -m 0755 "$bin_dir/$program" "$root/bin/$program"
    python3 "$here/scripts/manpage.py" "$root/bin/$program" "$version" > "$root/share/man/man1/$program.1"
    "$root/bin/$program" --generate-completion-script bash > "$root/share/bash-completion/completions/$program"
    "$root/bin/$program" --generate-completion-script zsh > "$root/share/zsh/site-functions/_$program"
    "$root/bin/$program" --generate-completion-script fish > "$root/share/fish/vendor_completions.d/$program.fish"
done
install -m 0644 "$here/LICENSE" "$here/README.md" "$here/BENCHMARKS.md" "$here/RELIABILITY.md" "$doc_dir/"
install -d "$doc_dir/docs"
install -m 0644 "$here"/docs/*.md "$doc_dir/docs/"
