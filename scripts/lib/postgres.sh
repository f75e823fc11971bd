# shellcheck shell=bash
# Postgres for the scripts: the configured server when it answers, otherwise
# a cluster of the project's own (initdb + pg_ctl from Debian's `postgresql`
# package, installed with apt-get when missing and run as root), with its data
# in .run/pg/<name>, listening only on a free loopback port, trust auth.
# Sourced by the scripts, from the repository's root:
#   . scripts/lib/postgres.sh
#   pg_ensure "$url" test    # throwaway: stopped and deleted by pg_stop
#   pg_ensure "$url" dev keep  # kept: the data survives between runs
#   ... use "$pg_url" ...
#   pg_stop                  # in the EXIT trap
# The machine's own Postgres is only ever connected to, never started,
# stopped or configured.

pg_url="" pg_own_dir="" pg_own_keep="" pg_bindir="" pg_as=()

# Prints psql's complaint and fails if the server at $1 does not answer.
pg_check() {
  local err
  err=$(PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5} psql "$1" -v ON_ERROR_STOP=1 -Atqc 'select 1' 2>&1 >/dev/null) && return 0
  printf '%s\n' "$err" | head -n 3
  return 1
}

pg_apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  echo "==> installing $* (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; }
}

# The newest installed server's bin directory (Debian keeps them off PATH).
pg_find_bindir() {
  local d
  for d in $(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  return 1
}

pg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pg_ctl as the owner of the data (initdb and postgres refuse to run as root).
pg_ctl_() { "${pg_as[@]}" "$pg_bindir/pg_ctl" "$@"; }

# pg_ensure URL NAME [keep]: sets pg_url to URL if it answers, else starts the
# project's own cluster .run/pg/NAME and sets pg_url to it. Says which.
pg_ensure() {
  local url=$1 name=$2 keep=${3:-} why root dir log port leftover pid
  if ! command -v psql >/dev/null; then
    pg_apt_install postgresql-client || { echo "psql is required (Debian: apt-get install postgresql-client)" >&2; return 1; }
  fi
  if why=$(pg_check "$url"); then
    pg_url=$url
    echo "==> Postgres: $url" >&2
    return 0
  fi
  echo "==> Postgres at $url does not answer (${why//$'\n'/; })" >&2
  echo "==> starting a Postgres of the project's own in .run/pg/$name" >&2

  pg_bindir=$(pg_find_bindir) || { pg_apt_install postgresql && pg_bindir=$(pg_find_bindir); } || {
    echo "no Postgres server found to start (Debian: apt-get install postgresql), and none answers at $url" >&2
    return 1
  }
  pg_as=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || {
      echo "initdb refuses to run as root and there is no user 'postgres' to run it as" >&2
      return 1
    }
    pg_as=(runuser -u postgres --)
  fi

  root=$PWD
  mkdir -p "$root/.run/pg"
  # Throwaway clusters of earlier runs that were killed too hard to clean up.
  for leftover in "$root"/.run/pg/*.[0-9]*; do
    [ -d "$leftover" ] || continue
    pid=${leftover##*.}
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    # Its run is still going (a zombie has no command line: it is gone).
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q . && continue
    pg_ctl_ -D "$leftover" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$leftover" "$leftover.log"
  done

  dir="$root/.run/pg/$name"
  log="$root/.run/pg/$name.log"
  if [ ! -f "$dir/PG_VERSION" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 700 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if ! "${pg_as[@]}" test -w "$dir"; then
      echo "the user postgres cannot write $dir (a parent directory is closed to it); point the URL at a running Postgres instead" >&2
      return 1
    fi
    if ! "${pg_as[@]}" "$pg_bindir/initdb" -D "$dir" -U postgres -A trust -E UTF8 >"$log" 2>&1; then
      echo "initdb failed; the last lines of $log:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    {
      echo "# scripts/lib/postgres.sh: loopback TCP only, no unix socket"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = ''"
      if [ -z "$keep" ]; then
        echo "# throwaway: durability is not needed, speed is"
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
      fi
    } >> "$dir/postgresql.conf"
  fi
  # Left running by an earlier run that was killed too hard to stop it.
  if pg_ctl_ -D "$dir" status >/dev/null 2>&1; then
    pg_ctl_ -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
  fi
  port=$(pg_free_port)
  : > "$log"
  [ "$(id -u)" = 0 ] && chown postgres: "$log"
  if ! pg_ctl_ -D "$dir" -l "$log" -w -t 60 -o "-p $port" start >/dev/null 2>&1; then
    echo "Postgres did not start; the last lines of its log ${log#"$root"/}:" >&2
    tail -n 20 "$log" >&2
    return 1
  fi
  pg_own_dir=$dir pg_own_keep=$keep
  pg_url="postgres://postgres@127.0.0.1:$port/postgres"
  echo "==> Postgres: $pg_url (PostgreSQL $("$pg_bindir/postgres" --version | awk '{print $3}'), data in ${dir#"$root"/}$([ -n "$keep" ] && echo ", kept between runs"), log ${log#"$root"/})" >&2
}

# Stops the cluster pg_ensure started, if it did; deletes a throwaway one.
pg_stop() {
  [ -n "$pg_own_dir" ] || return 0
  if [ -n "$pg_own_keep" ]; then
    pg_ctl_ -D "$pg_own_dir" -m fast -w stop >/dev/null 2>&1 || true
  else
    pg_ctl_ -D "$pg_own_dir" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$pg_own_dir" "$pg_own_dir.log"
  fi
  pg_own_dir=""
}
