# Add LoRA Kiln to the Start menu (and, with -Desktop, the desktop) for the current user.
# Run it from the built app folder (dist\lorakiln\), where it sits beside lorakiln.exe:
#
#   powershell -ExecutionPolicy Bypass -File create-shortcut.ps1 [-Desktop] [-Uninstall]
#
# The shortcut takes its icon from lorakiln.exe (set by packaging/lorakiln.spec) and starts
# in the user's profile folder: the app writes nothing into its own folder.
param([switch]$Desktop, [switch]$Uninstall)
$ErrorActionPreference = "Stop"

$app = Join-Path $PSScriptRoot "lorakiln.exe"
if (-not $Uninstall -and -not (Test-Path $app)) {
    Write-Error "lorakiln.exe is not next to this script ($PSScriptRoot); run the script from the built app folder."
    exit 1
}
$places = @([Environment]::GetFolderPath("Programs"))
if ($Desktop) { $places += [Environment]::GetFolderPath("Desktop") }

$shell = New-Object -ComObject WScript.Shell
foreach ($place in $places) {
    $link = Join-Path $place "LoRA Kiln.lnk"
    if ($Uninstall) {
        if (Test-Path $link) { Remove-Item $link; Write-Output "removed $link" }
        continue
    }
    $shortcut = $shell.CreateShortcut($link)
    $shortcut.TargetPath = $app
    $shortcut.WorkingDirectory = $env:USERPROFILE
    $shortcut.IconLocation = "$app,0"
    $shortcut.Description = "Train Stable Diffusion LoRAs and watch what the training does"
    $shortcut.Save()
    Write-Output "created $link"
}
