/** Prompt and negative prompt, with pickers for LoRAs, inversions and wildcards, and trigger-token chips. */
import { useId } from 'react';
import { useApp } from '../context';
import { labelFor, useI18n } from '../i18n';
import type { TabParams } from '../state/params';
import { TextField } from './fields';
import type { Update } from './ParamControls';

/** Network tokens go first, at weight 1.0, as onnx-web adds them. */
export function addNetworkToken(prompt: string, type: 'lora' | 'inversion', name: string): string {
  const token = `<${type}:${name}:1.0>`;
  return prompt.includes(`<${type}:${name}:`) ? prompt : `${token} ${prompt}`.trim();
}

/** Wildcards go last, as onnx-web adds them. */
export function addWildcard(prompt: string, name: string): string {
  return `${prompt.trimEnd()} __${name}__`.trim();
}

/** Names of the LoRAs and inversions a prompt references. */
export function referencedNetworks(prompt: string): Set<string> {
  const names = new Set<string>();
  for (const m of prompt.matchAll(/<(lora|inversion|embeddings):([^:>]+)(?::[^>]*)?>/g)) names.add(m[2]);
  return names;
}

function networkLabel(t: ReturnType<typeof useI18n>['t'], type: string, name: string): string {
  const label = labelFor(t, 'model', `${type}.${name}`);
  return label === `${type}.${name}` ? name : label;
}

function Picker({ label, options, onPick, testId }: { label: string; options: Array<{ value: string; label: string }>; onPick(v: string): void; testId?: string }) {
  const id = useId();
  const { t } = useI18n();
  return (
    <div className="field picker">
      <label htmlFor={id}>{label}</label>
      <select
        id={id}
        value=""
        disabled={options.length === 0}
        data-testid={testId}
        onChange={(e) => {
          if (e.target.value) onPick(e.target.value);
        }}
      >
        <option value="">{options.length === 0 ? t('prompt.noneAvailable') : t('prompt.choose')}</option>
        {options.map((o) => (
          <option key={o.value} value={o.value}>
            {o.label}
          </option>
        ))}
      </select>
    </div>
  );
}

export function PromptControls({ p, set, negative = true }: { p: TabParams; set: Update; negative?: boolean }) {
  const { server } = useApp();
  const { t } = useI18n();
  const networks = server.models.networks;
  const loras = networks.filter((n) => n.type === 'lora');
  const inversions = networks.filter((n) => n.type === 'inversion');
  const used = referencedNetworks(`${p.prompt} ${p.negativePrompt}`);
  const chips = networks
    .filter((n) => used.has(n.name))
    .flatMap((n) => n.tokens)
    .filter((token, i, all) => all.indexOf(token) === i);

  return (
    <div className="prompt-controls">
      <TextField label={t('param.prompt')} value={p.prompt} onChange={(prompt) => set({ prompt })} multiline rows={3} testId="prompt" />
      {chips.length > 0 && (
        <div className="chips" role="group" aria-label={t('prompt.tokens')}>
          {chips.map((token) => (
            <button
              key={token}
              type="button"
              className="chip"
              aria-pressed={p.prompt.includes(token)}
              onClick={() => set({ prompt: p.prompt.includes(token) ? p.prompt : `${p.prompt.trimEnd()}, ${token}` })}
            >
              {token}
            </button>
          ))}
        </div>
      )}
      {negative && (
        <TextField label={t('param.negativePrompt')} value={p.negativePrompt} onChange={(negativePrompt) => set({ negativePrompt })} multiline rows={2} testId="negative-prompt" />
      )}
      <div className="field-grid pickers">
        <Picker
          label={t('prompt.addLora')}
          options={loras.map((n) => ({ value: n.name, label: networkLabel(t, 'lora', n.name) }))}
          onPick={(name) => set({ prompt: addNetworkToken(p.prompt, 'lora', name) })}
        />
        <Picker
          label={t('prompt.addInversion')}
          options={inversions.map((n) => ({ value: n.name, label: networkLabel(t, 'inversion', n.name) }))}
          onPick={(name) => set({ prompt: addNetworkToken(p.prompt, 'inversion', name) })}
        />
        <Picker
          label={t('prompt.addWildcard')}
          options={server.wildcards.map((w) => ({ value: w, label: w }))}
          onPick={(name) => set({ prompt: addWildcard(p.prompt, name) })}
        />
      </div>
    </div>
  );
}
