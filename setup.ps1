# Create .venv and install the toolkit (Windows PowerShell). setup.sh does the same on Linux and macOS, line for line.
# `.\setup.ps1 --dev` also installs the test tools (pytest, ruff), for the test command and CI.
# CPU torch 2.13 by default; set TORCH_SPEC for a CUDA build, e.g.
# $env:TORCH_SPEC = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"; .\setup.ps1
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot
$Extras = switch ("$args") {
  "" { "" }
  "--dev" { "[dev]" }
  default { Write-Error "usage: .\setup.ps1 [--dev]  (--dev: also pytest and ruff, for running the tests)" }
}
$Py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$TorchSpec = if ($env:TORCH_SPEC) { $env:TORCH_SPEC } else { "torch==2.13.0" }
$TorchArgs = $TorchSpec -split '\s+'  # TORCH_SPEC may hold several words (an --index-url)
# Torch is found and pinned from its metadata, never imported: before numpy is installed, importing torch prints
# "Failed to initialize NumPy".
$HasTorch = 'import importlib.util, sys; sys.exit(importlib.util.find_spec(''torch'') is None)'
$PinTorch = 'import importlib.metadata as m, sys; v = m.version(''torch''); open(sys.argv[1], ''w'').write(''torch=='' + v.split(''+'')[0] + ''\n'')'
$VenvPy = ".venv\Scripts\python.exe"
function Invoke-Checked { $exe, $rest = $args; & $exe @rest; if ($LASTEXITCODE -ne 0) { throw "exit code ${LASTEXITCODE}: $args" } }
# One line per step: the installs take minutes and pip runs quietly.
function Step { Write-Host "[$($args[0])/5] $($args[1])" }
Step 1 "virtual environment .venv"
if (-not (Test-Path $VenvPy)) { Invoke-Checked $Py -m venv .venv }
Step 2 "upgrading pip"
Invoke-Checked $VenvPy -m pip install -q --upgrade pip
Step 3 "torch ($TorchSpec unless one is installed; the largest download, a few minutes)"
& $VenvPy -c $HasTorch; if ($LASTEXITCODE -ne 0) { Invoke-Checked $VenvPy -m pip install -q @TorchArgs }
Step 4 "pinning torch in .venv/torch-constraint.txt"
# Pin whatever torch is installed so no later dependency swaps it for another build.
Invoke-Checked $VenvPy -c $PinTorch .venv\torch-constraint.txt
Step 5 "the toolkit and its dependencies$Extras (a few minutes)"
Invoke-Checked $VenvPy -m pip install -q -c .venv\torch-constraint.txt -e ".$Extras"
Write-Host "setup done: $(& $VenvPy -c 'import torch; print(''torch'', torch.__version__)')"
