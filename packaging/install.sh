#!/bin/sh
# Install the appliance as a systemd service. See --help.
set -eu

usage() {
	cat <<'EOF'
Usage: packaging/install.sh [--dry-run] [BUILD]

Install the appliance executable, its systemd unit and a default configuration.

BUILD is the PyInstaller output to install (default: dist/appliance-onedir if it exists,
else dist/appliance):
  a folder (the one-folder build, recommended for systemd)
      copied to /opt/appliance; /usr/local/bin/appliance becomes a symlink to
      /opt/appliance/appliance
  a file (the one-file build, or any single executable)
      installed as /usr/local/bin/appliance

Then, as root:
  - creates the system user and group `appliance` (home /var/lib/appliance) if missing
  - installs systemd/appliance.service to /etc/systemd/system/
  - writes /etc/appliance/config.toml (root:appliance, 0640) from `appliance config sample`,
    with data_dir = "/var/lib/appliance" and bind = "127.0.0.1:8181", unless it exists
  - when systemd is running: systemctl daemon-reload and systemctl enable --now appliance
    (a running service is stopped first and started again with the new build)

Options:
  -n, --dry-run   print the commands instead of running them
  -h, --help      show this help

Environment:
  DESTDIR   stage everything under this directory (for building a package): every target path
            is prefixed with it, and the user, ownership and systemctl steps are skipped (the
            package's post-install script must do them). Root is not required.
EOF
}

DRY_RUN=0
SRC=""
while [ $# -gt 0 ]; do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	-n | --dry-run) DRY_RUN=1 ;;
	--)
		shift
		break
		;;
	-*)
		echo "install.sh: unknown option $1 (see --help)" >&2
		exit 2
		;;
	*)
		if [ -n "$SRC" ]; then
			echo "install.sh: only one BUILD may be given (see --help)" >&2
			exit 2
		fi
		SRC=$1
		;;
	esac
	shift
done
if [ $# -gt 0 ]; then
	if [ -n "$SRC" ] || [ $# -gt 1 ]; then
		echo "install.sh: only one BUILD may be given (see --help)" >&2
		exit 2
	fi
	SRC=$1
fi

DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
UNIT_SRC=$REPO/systemd/appliance.service

NAME=appliance
STATE_DIR=/var/lib/appliance
OPT_DIR=/opt/appliance
BIN=/usr/local/bin/appliance
UNIT=/etc/systemd/system/appliance.service
CONFIG_DIR=/etc/appliance
CONFIG=$CONFIG_DIR/config.toml
BIND=127.0.0.1:8181

die() {
	echo "install.sh: $*" >&2
	exit 1
}

say() {
	echo "install.sh: $*"
}

# Run a command, or print it with --dry-run.
run() {
	if [ "$DRY_RUN" = 1 ]; then
		echo "+ $*"
	else
		"$@"
	fi
}

# -- checks -----------------------------------------------------------------------------------
if [ -z "$SRC" ]; then
	if [ -d "$REPO/dist/appliance-onedir" ]; then
		SRC=$REPO/dist/appliance-onedir
	else
		SRC=$REPO/dist/appliance
	fi
fi
if [ -d "$SRC" ]; then
	KIND="folder"
	EXE=$SRC/appliance
	if [ ! -f "$EXE" ] || [ ! -x "$EXE" ]; then
		die "$SRC is a folder without an executable named appliance in it"
	fi
elif [ -f "$SRC" ]; then
	KIND="file"
	EXE=$SRC
	[ -x "$EXE" ] || die "$SRC is not executable"
else
	die "no build at $SRC: build one with packaging/build.sh, or give its path (see --help)"
fi
[ -f "$UNIT_SRC" ] || die "cannot find the unit file $UNIT_SRC"
if [ -z "$DESTDIR" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
	die "run as root (or with DESTDIR=... to stage a package, or --dry-run)"
fi
if [ "$KIND" = file ] && [ "$(od -An -c -N4 "$EXE" | tr -d ' ')" = "177ELF" ]; then
	say "note: installing a single executable. If it is the PyInstaller one-file build, systemd"
	say "      will not accept its READY=1 (it comes from a child process): use the one-folder build."
fi

SYSTEMD=0
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
	SYSTEMD=1
fi

umask 022
TMP=""
SAMPLE=""
cleanup() {
	rm -f ${TMP:+"$TMP"} ${SAMPLE:+"$SAMPLE"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- stop a running service before its files are replaced -------------------------------------
WAS_ACTIVE=0
if [ "$SYSTEMD" = 1 ] && systemctl is-active --quiet "$NAME" 2>/dev/null; then
	WAS_ACTIVE=1
	say "stopping the running service (its buffer is persisted first)"
	run systemctl stop "$NAME"
fi

# -- the executable ---------------------------------------------------------------------------
run install -d -m 0755 "$DESTDIR/usr/local/bin"
if [ "$KIND" = folder ]; then
	run install -d -m 0755 "$DESTDIR/opt"
	run rm -rf "$DESTDIR$OPT_DIR.new"
	run cp -R "$SRC" "$DESTDIR$OPT_DIR.new"
	run rm -rf "$DESTDIR$OPT_DIR"
	run mv "$DESTDIR$OPT_DIR.new" "$DESTDIR$OPT_DIR"
	run chmod -R u+rwX,go+rX,go-w "$DESTDIR$OPT_DIR"
	run ln -sfn "$OPT_DIR/appliance" "$DESTDIR$BIN"
else
	run rm -f "$DESTDIR$BIN"
	run install -m 0755 "$SRC" "$DESTDIR$BIN"
	if [ -d "$DESTDIR$OPT_DIR" ]; then
		run rm -rf "$DESTDIR$OPT_DIR" # a one-folder build installed before
	fi
fi

# -- user and group ---------------------------------------------------------------------------
if [ -n "$DESTDIR" ]; then
	say "DESTDIR: not creating the user; the package must create system user and group $NAME"
	say "         (home $STATE_DIR, shell /usr/sbin/nologin) and chown root:$NAME $CONFIG"
else
	if ! getent group "$NAME" >/dev/null; then
		run groupadd --system "$NAME"
	fi
	if ! getent passwd "$NAME" >/dev/null; then
		run useradd --system --gid "$NAME" --home "$STATE_DIR" --no-create-home \
			--shell /usr/sbin/nologin --comment "appliance time-series database" "$NAME"
	fi
fi

# -- systemd unit -----------------------------------------------------------------------------
run install -d -m 0755 "$DESTDIR/etc/systemd/system"
run install -m 0644 "$UNIT_SRC" "$DESTDIR$UNIT"

# -- configuration ----------------------------------------------------------------------------
run install -d -m 0755 "$DESTDIR$CONFIG_DIR"
SED_EXPR="s|^data_dir = .*|data_dir = \"$STATE_DIR\"|; s|^bind = .*|bind = \"$BIND\"|"
if [ -e "$DESTDIR$CONFIG" ]; then
	say "keeping the existing $DESTDIR$CONFIG"
elif [ "$DRY_RUN" = 1 ]; then
	echo "+ $EXE config sample | sed '$SED_EXPR' > $DESTDIR$CONFIG"
	echo "+ chmod 0640 $DESTDIR$CONFIG"
	[ -n "$DESTDIR" ] || echo "+ chown root:$NAME $DESTDIR$CONFIG"
else
	TMP=$(mktemp "$DESTDIR$CONFIG_DIR/.config.toml.XXXXXX")
	SAMPLE=$(mktemp "$DESTDIR$CONFIG_DIR/.config.sample.XXXXXX")
	"$EXE" config sample >"$SAMPLE" || die "$EXE config sample failed"
	sed "$SED_EXPR" "$SAMPLE" >"$TMP"
	grep -q "^data_dir = \"$STATE_DIR\"\$" "$TMP" || die "no data_dir setting in the output of config sample"
	grep -q "^bind = \"$BIND\"\$" "$TMP" || die "no bind setting in the output of config sample"
	chmod 0640 "$TMP"
	[ -n "$DESTDIR" ] || chown "root:$NAME" "$TMP"
	mv "$TMP" "$DESTDIR$CONFIG"
	TMP=""
	rm -f "$SAMPLE"
	SAMPLE=""
	say "wrote $DESTDIR$CONFIG"
fi

# -- start ------------------------------------------------------------------------------------
if [ "$SYSTEMD" = 1 ]; then
	run systemctl daemon-reload
	run systemctl enable --now "$NAME"
	if [ "$WAS_ACTIVE" = 1 ]; then
		say "restarted $NAME with the new build"
	fi
	say "status: systemctl status $NAME; logs: journalctl -u $NAME -f"
elif [ -n "$DESTDIR" ]; then
	say "staged under $DESTDIR; after installing the package run:"
	say "  systemctl daemon-reload && systemctl enable --now $NAME"
else
	say "systemd is not running here (no /run/systemd/system); to start the appliance by hand:"
	say "  runuser -u $NAME -- $BIN serve --config $CONFIG"
	say "(create $STATE_DIR owned by $NAME first), or on a systemd host:"
	say "  systemctl daemon-reload && systemctl enable --now $NAME"
fi
