# Create .venv and install the toolkit (Windows PowerShell). setup.sh does the same on Linux and macOS, line for line.
# CPU torch 2.13 by default; set TORCH_SPEC for a CUDA build, e.g.
# $env:TORCH_SPEC = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"; .\setup.ps1
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot
$Py = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$TorchSpec = if ($env:TORCH_SPEC) { $env:TORCH_SPEC } else { "torch==2.13.0" }
$TorchArgs = $TorchSpec -split '\s+'  # TORCH_SPEC may hold several words (an --index-url)
# Torch is found and pinned from its metadata, never imported: before numpy is installed, importing torch prints
# "Failed to initialize NumPy".
$HasTorch = 'import importlib.util, sys; sys.exit(importlib.util.find_spec(''torch'') is None)'
$PinTorch = 'import importlib.metadata as m, sys; v = m.version(''torch''); open(sys.argv[1], ''w'').write(''torch=='' + v.split(''+'')[0] + ''\n'')'
$VenvPy = ".venv\Scripts\python.exe"
function Invoke-Checked { $exe, $rest = $args; & $exe @rest; if ($LASTEXITCODE -ne 0) { throw "exit code ${LASTEXITCODE}: $args" } }
if (-not (Test-Path $VenvPy)) { Invoke-Checked $Py -m venv .venv }
Invoke-Checked $VenvPy -m pip install -q --upgrade pip
& $VenvPy -c $HasTorch; if ($LASTEXITCODE -ne 0) { Invoke-Checked $VenvPy -m pip install -q @TorchArgs }
# Pin whatever torch is installed so no later dependency swaps it for another build.
Invoke-Checked $VenvPy -c $PinTorch .venv\torch-constraint.txt
Invoke-Checked $VenvPy -m pip install -q -c .venv\torch-constraint.txt -e ".[dev]"
Write-Host "setup done: $(& $VenvPy -c 'import torch; print(''torch'', torch.__version__)')"
