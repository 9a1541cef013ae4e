# Shared by scripts/demo and bench/failover (source it; needs $BIN = patronus-router, $BENCH = patronus-bench).
# Everything here reads the lab's kernel state and databases the way a user would: nft, ip, status.

# LAB_INSTANCE: the lab instance (`lab up --instance`); `lab` is the user's. Benches use a private one.
LAB_INSTANCE=${LAB_INSTANCE:-lab}
LAB_STATE=${LAB_STATE:-/run/patronus-lab/$LAB_INSTANCE}
LAB_NS=pt$LAB_INSTANCE

# `patronus-router lab ...` for this instance.
lab_cli() { "$BIN" lab "$@" --instance "$LAB_INSTANCE"; }

# Paths of SITE that are up, from its database.
lab_paths_up() { "$BIN" status --database "$LAB_STATE/$1.db" | sed -n 's/.*(Up: \([0-9]*\),.*/\1/p'; }

# Waits until SITE has WANT paths up (default 60 s); prints the seconds it took (to 0.1 s).
lab_wait_up() {
    local site=$1 want=$2 limit=${3:-60} start
    start=$(date +%s%N)
    until [[ "$(lab_paths_up "$site")" == "$want" ]]; do
        (( ($(date +%s%N) - start) / 1000000000 < limit )) || { echo "$site: $(lab_paths_up "$site") of $want paths up after ${limit}s" >&2; return 1; }
        sleep 0.1
    done
    awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN { printf "%.1f\n", ns / 1e9 }'
}

# The path id (`paths.id`) SITE's kernel uses for CLASS towards DEST, from nft: the classify chain's ct mark
# for the class, then the destination site's class -> path map (chains are named `<class>_path<id>`).
lab_class_path() {
    local site=$1 class=$2 dest=$3 mark
    mark=$(ip netns exec "$LAB_NS-$site" nft list chain inet patronus classify | grep "comment \"class $class\"" | grep -o '| 0x[0-9a-f]*' | awk '{print $2}')
    ip netns exec "$LAB_NS-$site" nft list map inet patronus "site_$dest" | grep -o "$mark : goto ${class}_path[0-9]*" | grep -o '[0-9]*$'
}

# The local uplink label (isp-a, isp-b, ...) of SITE's path ID, from its database.
lab_path_uplink() {
    sqlite3 "$LAB_STATE/$1.db" "SELECT local_label FROM paths WHERE id = $2"
}

# Streams VoIP-class UDP (160-byte datagrams to port 20000, RTP range) at 200 packets/s from hq's LAN host to
# east's, cuts hq's UPLINK 1.2 s in, restores it when the stream ends; prints the receiver's line
# ("received N expected M lost L max_gap_ms G").
lab_measure_cut() {
    local uplink=$1 out receiver sender
    out=$(mktemp)
    ip netns exec "$LAB_NS-east-lan" "$BENCH" stream-recv 20000 4.5 >"$out" &
    receiver=$!
    sleep 0.3
    ip netns exec "$LAB_NS-hq-lan" "$BENCH" stream-send 10.10.2.2 20000 200 3.5 &
    sender=$!
    sleep 1.2
    lab_cli impair hq "$uplink" --cut >/dev/null
    wait "$sender"
    lab_cli impair hq "$uplink" --restore >/dev/null
    wait "$receiver"
    cat "$out"
    rm -f "$out"
}

# Blackout in ms from a receiver line: the longest silence minus one send interval (5 ms at 200 pps). The
# receiver only sees gaps between arrivals: when the stream (700 datagrams) never came back, the silence
# lasted at least from the last datagram received to the stream's end, and that lower bound is reported.
lab_blackout_ms() {
    sed -n 's/.*expected \([0-9]*\).*max_gap_ms \([0-9.]*\).*/\1 \2/p' <<<"$1" | awk '{
        b = $2 - 5; if (b < 0) b = 0
        tail = (700 - $1) * 5; if (tail > b) b = tail
        printf "%.1f", b }'
}

# Waits until SITE has measured the bandwidth of WANT paths (default 60 s). The first tests run at line rate
# through the userspace emulator right after start; a measurement taken while they run would measure them.
lab_wait_measured() {
    local site=$1 want=$2 limit=${3:-60} start count
    start=$(date +%s)
    while true; do
        count=$("$BIN" status --database "$LAB_STATE/$site.db" --json | grep -c '"bandwidth_mbps"' || true)
        (( count >= want )) && return 0
        (( $(date +%s) - start < limit )) || { echo "$site: bandwidth of $count of $want paths measured after ${limit}s" >&2; return 1; }
        sleep 0.2
    done
}
