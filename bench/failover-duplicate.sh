# bench/failover --duplicate (sourced by bench/failover once the lab is up and measured; see its header).
# Needs: BIN, BENCH, STATE, CUTS, FALSE_DROPS, SITES, PATHS, lablib.sh.

# Duplication of voip on (1) or off (0) in every site's database; waits until hq's kernel agrees (the copy
# map has an element, or the copy table is gone) and east's has its de-duplication chain when on.
dup_set() {
    local on=$1 flag site
    flag=$([[ $on == 1 ]] && echo --duplicate || echo --no-duplicate)
    for site in "${SITES[@]}"; do "$BIN" policy edit --database "$STATE/$site.db" voip "$flag" >/dev/null; done
    for _ in $(seq 100); do
        if [[ $on == 1 ]]; then
            ip netns exec "$LAB_NS-hq" nft list map ip patronus_egress copies 2>/dev/null | grep -q "jump copy_voip_path" \
                && ip netns exec "$LAB_NS-east" nft list chain inet patronus voip_dedup >/dev/null 2>&1 && return 0
        else
            ip netns exec "$LAB_NS-hq" nft list table ip patronus_egress >/dev/null 2>&1 || return 0
        fi
        sleep 0.1
    done
    echo "duplication $flag: hq's kernel did not follow within 10 s" >&2
    return 1
}

field() { sed -n "s/.* $1 \([0-9.]*\).*/\1/p" <<<"$2"; }

rows=()
for ((i = 1; i <= CUTS; i++)); do
    row=$(printf 'cut %2d' "$i")
    for on in 1 0; do
        dup_set "$on"
        uplink=$(lab_path_uplink hq "$(lab_class_path hq voip east)")
        line=$(lab_measure_cut "$uplink")
        blackout=$(lab_blackout_ms "$line")
        row+=$(printf ' | %s %-5s lost %3s blackout %6s ms duplicates %s' "$([[ $on == 1 ]] && echo dup || echo off)" \
            "$uplink" "$(field lost "$line")" "$blackout" "$(field duplicates "$line")")
        lab_wait_up hq $PATHS >/dev/null
        lab_wait_up east $PATHS >/dev/null
        # Copying resumes only once the cut path is usable again (up and measured): let it settle.
        sleep 2
    done
    echo "$row"
    rows+=("$row")
done

summary=$(printf '%s\n' "${rows[@]}" | awk -F'|' '
    function stat(a, n,    i, s) { s = 0; for (i = 1; i <= n; i++) s += a[i]; return s }
    {
        n++
        split($2, d, " "); split($3, o, " ")
        # fields: mode uplink "lost" N "blackout" B "ms" "duplicates" D
        dl[n] = d[4]; db[n] = d[6]; dd[n] = d[9]
        ol[n] = o[4]; ob[n] = o[6]; od[n] = o[9]
    }
    function median(a, n,    i, j, t, b) {
        for (i = 1; i <= n; i++) b[i] = a[i]
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
        return b[int((n + 1) / 2)]
    }
    function max(a, n,    i, m) { m = a[1]; for (i = 2; i <= n; i++) if (a[i] > m) m = a[i]; return m }
    END {
        printf "%d cuts of the path VoIP uses, 200 packets/s (700 datagrams per cut):\n", n
        printf "  duplication on : lost %d datagrams in total (max %d in one cut), blackout median %.1f ms max %.1f ms, duplicates at the receiver %d\n", stat(dl, n), max(dl, n), median(db, n), max(db, n), stat(dd, n)
        printf "  duplication off: lost %d datagrams in total (max %d in one cut), blackout median %.1f ms max %.1f ms, duplicates at the receiver %d\n", stat(ol, n), max(ol, n), median(ob, n), max(ob, n), stat(od, n)
        printf "target (issue 17): 0 lost and 0 duplicates with duplication on: %s\n", (stat(dl, n) == 0 && stat(dd, n) == 0 ? "met" : "NOT met")
    }')
echo "$summary"

false_report=""
if (( FALSE_DROPS > 0 )); then
    dup_set 1
    lab_wait_up hq $PATHS >/dev/null
    sleep 2
    counters() {  # copies sent by hq, second copies dropped by east (voip, every path), from status --json
        "$BIN" status --database "$STATE/$1.db" --netns "$LAB_NS-$1" --json | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(sum(d.get('$2', 0) for e in s.get('steering', []) if e['policy'] == 'voip' for d in e.get('duplication', [])))"
    }
    sent0=$(counters hq copies_sent); dropped0=$(counters east duplicates_dropped)
    events="SELECT COUNT(*), COALESCE(SUM(reason = 'path-down'), 0) FROM failover_events"
    events_hq0=$(sqlite3 -cmd ".timeout 5000" "$STATE/hq.db" "$events;"); events_east0=$(sqlite3 -cmd ".timeout 5000" "$STATE/east.db" "$events;")
    # Once a second: does hq's copy map copy voip (an element), and is east's de-duplication chain there?
    sampler=$(mktemp)
    ( end=$((SECONDS + FALSE_DROPS)); while (( SECONDS < end )); do
        c=$(ip netns exec "$LAB_NS-hq" nft list map ip patronus_egress copies 2>/dev/null | grep -c "jump copy_voip_path" || true)
        d=$(ip netns exec "$LAB_NS-east" nft list chain inet patronus voip_dedup >/dev/null 2>&1 && echo 1 || echo 0)
        echo "$c $d" >>"$sampler"; sleep 1
      done ) &
    sampler_pid=$!
    outs=()
    pids=()
    for k in $(seq 0 9); do
        out=$(mktemp); outs+=("$out")
        ip netns exec "$LAB_NS-east-lan" "$BENCH" stream-recv $((16400 + 2 * k)) "$((FALSE_DROPS + 3))" rtp >"$out" &
        pids+=($!)
    done
    sleep 0.5
    for k in $(seq 0 9); do
        ip netns exec "$LAB_NS-hq-lan" "$BENCH" stream-send 10.10.2.2 $((16400 + 2 * k)) 50 "$FALSE_DROPS" rtp $((0x5eed0000 + k)) &
        pids+=($!)
    done
    wait "${pids[@]}"
    sleep 1
    sent1=$(counters hq copies_sent); dropped1=$(counters east duplicates_dropped)
    wait "$sampler_pid" || true
    samples=$(wc -l <"$sampler"); no_copy=$(awk '$1 == 0' "$sampler" | wc -l); no_dedup=$(awk '$2 == 0' "$sampler" | wc -l); rm -f "$sampler"
    read -r ev_hq down_hq <<<"$(sqlite3 -cmd ".timeout 5000" -separator ' ' "$STATE/hq.db" "$events;")"
    read -r ev_east down_east <<<"$(sqlite3 -cmd ".timeout 5000" -separator ' ' "$STATE/east.db" "$events;")"
    read -r ev_hq0 down_hq0 <<<"${events_hq0//|/ }"; read -r ev_east0 down_east0 <<<"${events_east0//|/ }"
    total=0; lost_total=0; dups=0
    for out in "${outs[@]}"; do
        line=$(cat "$out"); rm -f "$out"
        total=$((total + $(field expected "$line"))); lost_total=$((lost_total + $(field lost "$line")))
        dups=$((dups + $(field duplicates "$line")))
    done
    false_report=$(awk -v s="$FALSE_DROPS" -v t="$total" -v l="$lost_total" -v d="$dups" -v c=$((sent1 - sent0)) -v x=$((dropped1 - dropped0)) \
        -v ns="$samples" -v nc="$no_copy" -v nd="$no_dedup" -v eh=$((ev_hq - ev_hq0)) -v dh=$((down_hq - down_hq0)) \
        -v ee=$((ev_east - ev_east0)) -v de=$((down_east - down_east0)) 'BEGIN {
        printf "false drops: 10 RTP streams x 50 packets/s for %d s on two clean paths, duplication on: %d datagrams sent, %d lost at the receiver (false drops <= %d: %.4f %%; target <= 0.01 %%: %s), %d duplicates at the receiver\n", s, t, l, l, (t ? 100 * l / t : 0), (t && l / t <= 0.0001 ? "met" : "NOT met"), d
        printf "  kernel counters over the run: hq sent %d copies for %d datagrams (%s), east dropped %d second arrivals\n", c, t, (c == t ? "one copy each" : sprintf("%d not copied", t - c)), x
        # Cross-check: every copy that arrives makes one second arrival at east, which east drops (the copy, or the
        # original when the copy came first) or, later than the 2 s it remembers a packet, delivers (a duplicate at
        # the receiver). So copies sent = dropped + duplicates + copies lost on the way - false drops (a false drop
        # drops a distinct packet that was no second arrival).
        printf "  cross-check: copies the receiver would have seen without de-duplication: %d (copies sent); east dropped %d, the receiver saw %d: %d copies unaccounted for (= copies lost on the way - false drops)\n", c, x, d, c - x - d
        printf "  while the streams ran: %d one-second samples of the copy map at hq, %d without a voip copy element (the second path not usable), %d without the voip_dedup chain at east; failover events: hq %d (path-down %d), east %d (path-down %d)\n", ns, nc, nd, eh, dh, ee, de }')
    echo "$false_report"
fi

mkdir -p bench/results
{
    echo "# bench/failover --duplicate"
    echo
    echo "Command: \`sudo bench/failover $CUTS --duplicate$( (( FALSE_DROPS > 0 )) && echo " --false-drops $FALSE_DROPS")\` ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), kernel $(uname -r), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), binary $BIN)"
    echo
    echo "VoIP-class UDP at 200 packets/s from hq's LAN to east's LAN; each cut blackholes the uplink the stream uses"
    echo "(WAN emulator) 1.2 s into a 3.5 s stream; every cut is run twice, duplication on then off; lost = datagrams"
    echo "missing at the receiver (by sequence number), blackout = longest silence minus one send interval,"
    echo "duplicates = datagrams the receiver got twice."
    echo
    echo '```'
    printf '%s\n' "${rows[@]}"
    echo "$summary"
    [[ -n "$false_report" ]] && echo "$false_report"
    echo '```'
} > bench/results/failover-duplicate.md
