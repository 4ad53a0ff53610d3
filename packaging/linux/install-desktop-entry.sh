#!/bin/sh
# Add LoRA Kiln to the desktop's application menu, for this user only (no root needed):
# the entry goes to ~/.local/share/applications, the icon to the hicolor theme.
#
#   ./install-desktop-entry.sh [APP_FOLDER]     APP_FOLDER: the built app (default: this
#                                               script's folder, i.e. dist/lorakiln/)
#   ./install-desktop-entry.sh --uninstall
set -eu

data="${XDG_DATA_HOME:-$HOME/.local/share}"
entry="$data/applications/lorakiln.desktop"
icon="$data/icons/hicolor/256x256/apps/lorakiln.png"

refresh_menus() {
    # Desktops that cache their menus pick the change up sooner; neither tool is required.
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$data/applications" || true
    command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$data/icons/hicolor" || true
}

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$entry" "$icon"
    refresh_menus
    echo "removed $entry and $icon"
    exit 0
fi

here=$(cd "$(dirname "$0")" && pwd)
folder=$(cd "${1:-$here}" 2>/dev/null && pwd) || { echo "error: no folder ${1:-$here}" >&2; exit 1; }
app="$folder/lorakiln"
template="$folder/lorakiln.desktop"
[ -f "$template" ] || template="$here/lorakiln.desktop"
icon_source="$folder/_internal/resources/icons/lorakiln.png"

if [ ! -f "$app" ] || [ ! -x "$app" ]; then
    echo "error: $app is not an executable LoRA Kiln; pass the built app folder (dist/lorakiln)" >&2
    exit 1
fi
case "$app" in
    *'"'*|*'`'*|*'$'*|*'\'*|*'%'*|*'|'*|*'&'*)
        echo "error: the path $app contains one of \" \` \$ \\ % | &, which a desktop entry cannot run; move the app folder" >&2
        exit 1 ;;
esac
if [ ! -f "$icon_source" ]; then
    echo "error: the icon $icon_source is missing; is $folder a complete LoRA Kiln build?" >&2
    exit 1
fi

mkdir -p "$(dirname "$entry")" "$(dirname "$icon")"
cp "$icon_source" "$icon.tmp.$$" && mv -f "$icon.tmp.$$" "$icon"
sed "s|@APP@|$app|g" "$template" > "$entry.tmp.$$" && mv -f "$entry.tmp.$$" "$entry"
chmod 644 "$entry"
refresh_menus
echo "installed $entry (runs $app) and $icon"
