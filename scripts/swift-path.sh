# Sourced by every script that runs swift: sudo resets PATH, so find the Swift toolchain where it is commonly
# installed, or say how to pass it on.
if ! command -v swift >/dev/null; then
    for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin /usr/local/swift/usr/bin; do
        [[ -x "$dir/swift" ]] && export PATH="$dir:$PATH" && break
    done
fi
command -v swift >/dev/null || { echo "$(basename "$0"): swift is not in PATH; run: sudo env PATH=\"\$PATH\" $0" >&2; exit 1; }
