/** The parameter groups of the generation tabs, each built from the server's lists and ranges. */
import { useApp } from '../context';
import { labelFor, useI18n } from '../i18n';
import { randomSeed } from '../client/requests';
import {
  choiceKeys,
  GRID_PARAMETERS,
  type GridAxis,
  type GridParameter,
  type JobTab,
  nativeScale,
  numberSpec,
  pipelinesForTab,
  type TabParams,
} from '../state/params';
import { CheckField, clampToSpec, NumberField, type Option, Section, SelectField, TextField } from './fields';

export type Update = (patch: Partial<TabParams>) => void;

interface GroupProps {
  tab: JobTab;
  p: TabParams;
  set: Update;
}

function useOptions() {
  const { t } = useI18n();
  return (group: string, names: readonly string[], none?: string): Option[] => [
    ...(none !== undefined ? [{ value: '', label: none }] : []),
    ...names.map((name) => ({ value: name, label: labelFor(t, group, name) })),
  ];
}

function useSpec() {
  const { server } = useApp();
  return (key: string) => numberSpec(server.params, key);
}

export function ModelControls({ tab, p, set }: GroupProps) {
  const { server } = useApp();
  const { t } = useI18n();
  const options = useOptions();
  const pipelines = pipelinesForTab(tab, server.pipelines);
  const controlNets = server.models.networks.filter((n) => n.type === 'control').map((n) => n.name);
  const usesDiffusion = tab !== 'upscale' && tab !== 'blend';
  return (
    <div className="field-grid" data-testid="model-controls">
      <SelectField label={t('param.platform')} value={p.platform} options={options('platform', server.platforms)} onChange={(platform) => set({ platform })} />
      {usesDiffusion && (
        <SelectField label={t('param.model')} value={p.model} options={options('model', server.models.diffusion)} onChange={(model) => set({ model })} testId="model" />
      )}
      {usesDiffusion && pipelines.length > 1 && (
        <SelectField label={t('param.pipeline')} value={p.pipeline} options={options('pipeline', pipelines)} onChange={(pipeline) => set({ pipeline })} />
      )}
      {tab === 'img2img' && p.pipeline === 'controlnet' && (
        <SelectField label={t('param.control')} value={p.control} options={options('model', controlNets, t('common.none'))} onChange={(control) => set({ control })} />
      )}
    </div>
  );
}

export function ImageParamControls({ p, set }: GroupProps) {
  const { server } = useApp();
  const { t } = useI18n();
  const options = useOptions();
  const spec = useSpec();
  return (
    <div className="field-grid" data-testid="image-params">
      <SelectField label={t('param.scheduler')} value={p.scheduler} options={options('scheduler', server.schedulers)} onChange={(scheduler) => set({ scheduler })} testId="scheduler" />
      <NumberField label={t('param.steps')} value={p.steps} spec={spec('steps')} onChange={(steps) => set({ steps })} testId="steps" />
      <NumberField label={t('param.cfg')} value={p.cfg} spec={spec('cfg')} onChange={(cfg) => set({ cfg })} />
      <NumberField label={t('param.seed')} value={p.seed} spec={spec('seed')} onChange={(seed) => set({ seed })} slider={false} testId="seed" hint={p.seed === -1 ? t('param.seedRandom') : undefined}>
        <button type="button" className="icon" aria-label={t('param.newSeed')} title={t('param.newSeed')} onClick={() => set({ seed: randomSeed() })}>
          <span aria-hidden="true">⚄</span>
        </button>
      </NumberField>
      <NumberField label={t('param.batch')} value={p.batch} spec={spec('batch')} onChange={(batch) => set({ batch })} testId="batch" />
      <NumberField label={t('param.eta')} value={p.eta} spec={spec('eta')} onChange={(eta) => set({ eta })} />
      <details className="section nested">
        <summary>{t('section.tiling')}</summary>
        <div className="field-grid">
          <NumberField label={t('param.unetTile')} value={p.unet_tile} spec={spec('unet_tile')} onChange={(unet_tile) => set({ unet_tile })} />
          <NumberField label={t('param.unetOverlap')} value={p.unet_overlap} spec={spec('unet_overlap')} onChange={(unet_overlap) => set({ unet_overlap })} />
          <CheckField label={t('param.tiledVae')} checked={p.tiled_vae} onChange={(tiled_vae) => set({ tiled_vae })} />
          <NumberField label={t('param.vaeTile')} value={p.vae_tile} spec={spec('vae_tile')} onChange={(vae_tile) => set({ vae_tile })} disabled={!p.tiled_vae} />
          <NumberField label={t('param.vaeOverlap')} value={p.vae_overlap} spec={spec('vae_overlap')} onChange={(vae_overlap) => set({ vae_overlap })} disabled={!p.tiled_vae} />
        </div>
      </details>
    </div>
  );
}

export function SizeControls({ p, set }: GroupProps) {
  const { t } = useI18n();
  const spec = useSpec();
  return (
    <div className="field-grid" data-testid="size">
      <NumberField label={t('param.width')} value={p.width} spec={spec('width')} onChange={(width) => set({ width })} testId="width" />
      <NumberField label={t('param.height')} value={p.height} spec={spec('height')} onChange={(height) => set({ height })} testId="height" />
    </div>
  );
}

export function Img2ImgControls({ p, set }: GroupProps) {
  const { server } = useApp();
  const { t } = useI18n();
  const options = useOptions();
  const spec = useSpec();
  return (
    <div className="field-grid">
      <NumberField label={t('param.strength')} value={p.strength} spec={spec('strength')} onChange={(strength) => set({ strength })} />
      <NumberField label={t('param.loopback')} value={p.loopback} spec={spec('loopback')} onChange={(loopback) => set({ loopback })} />
      <SelectField label={t('param.sourceFilter')} value={p.sourceFilter} options={options('sourceFilter', server.filters.source)} onChange={(sourceFilter) => set({ sourceFilter })} />
    </div>
  );
}

export function InpaintControls({ p, set }: GroupProps) {
  const { server } = useApp();
  const { t } = useI18n();
  const options = useOptions();
  const spec = useSpec();
  const tileOrders = choiceKeys(server.params, 'tileOrder');
  return (
    <div className="field-grid">
      <SelectField label={t('param.maskFilter')} value={p.filter} options={options('maskFilter', server.filters.mask)} onChange={(filter) => set({ filter })} />
      <SelectField label={t('param.noise')} value={p.noise} options={options('noiseSource', server.noises)} onChange={(noise) => set({ noise })} />
      <SelectField label={t('param.tileOrder')} value={p.tileOrder} options={options('tileOrder', tileOrders.length ? tileOrders : ['grid', 'spiral'])} onChange={(tileOrder) => set({ tileOrder })} />
      <div className="field">
        <label htmlFor="fill-color">{t('param.fillColor')}</label>
        <input id="fill-color" type="color" value={/^#[0-9a-f]{6}$/i.test(p.fillColor) ? p.fillColor : '#000000'} onChange={(e) => set({ fillColor: e.target.value })} />
      </div>
      <CheckField label={t('param.fullresInpaint')} checked={p.fullresInpaint} onChange={(fullresInpaint) => set({ fullresInpaint })} />
      <NumberField label={t('param.fullresInpaintPadding')} value={p.fullresInpaintPadding} spec={spec('fullresInpaintPadding')} onChange={(fullresInpaintPadding) => set({ fullresInpaintPadding })} disabled={!p.fullresInpaint} />
    </div>
  );
}

export function OutpaintSection({ p, set }: GroupProps) {
  const { t } = useI18n();
  const spec = useSpec();
  const border = (patch: Partial<TabParams['border']>) => set({ border: { ...p.border, ...patch } });
  return (
    <Section title={t('section.outpaint')} badge={p.border.enabled ? t('common.on') : undefined}>
      <CheckField label={t('param.outpaint')} checked={p.border.enabled} onChange={(enabled) => border({ enabled })} />
      <div className="field-grid">
        {(['left', 'right', 'top', 'bottom'] as const).map((side) => (
          <NumberField key={side} label={t(`param.${side}`)} value={p.border[side]} spec={spec(side)} onChange={(v) => border({ [side]: v })} disabled={!p.border.enabled} />
        ))}
      </div>
    </Section>
  );
}

export function HighresSection({ p, set }: GroupProps) {
  const { server } = useApp();
  const { t } = useI18n();
  const options = useOptions();
  const spec = useSpec();
  const h = p.highres;
  const highres = (patch: Partial<TabParams['highres']>) => set({ highres: { ...h, ...patch } });
  return (
    <Section title={t('section.highres')} badge={h.highres ? t('common.on') : undefined} testId="section-highres">
      <CheckField label={t('param.highres')} checked={h.highres} onChange={(v) => highres({ highres: v })} />
      <div className="field-grid">
        <NumberField label={t('param.highresSteps')} value={h.highresSteps} spec={spec('highresSteps')} onChange={(v) => highres({ highresSteps: v })} disabled={!h.highres} />
        <NumberField label={t('param.highresScale')} value={h.highresScale} spec={spec('highresScale')} onChange={(v) => highres({ highresScale: v })} disabled={!h.highres} />
        <NumberField label={t('param.highresStrength')} value={h.highresStrength} spec={spec('highresStrength')} onChange={(v) => highres({ highresStrength: v })} disabled={!h.highres} />
        <NumberField label={t('param.highresIterations')} value={h.highresIterations} spec={spec('highresIterations')} onChange={(v) => highres({ highresIterations: v })} disabled={!h.highres} />
        <SelectField label={t('param.highresMethod')} value={h.highresMethod} options={options('highresMethod', choiceKeys(server.params, 'highresMethod'))} onChange={(v) => highres({ highresMethod: v })} disabled={!h.highres} />
      </div>
    </Section>
  );
}

/**
 * Upscaling and face correction. A collapsed extra on the generation tabs; on the Upscale tab it
 * is the whole point, so it is shown open, switched on, as a plain group.
 */
export function UpscaleSection({ tab, p, set }: GroupProps) {
  const { server } = useApp();
  const { t } = useI18n();
  const options = useOptions();
  const spec = useSpec();
  const u = p.upscale;
  const upscale = (patch: Partial<TabParams['upscale']>) => set({ upscale: { ...u, ...patch } });
  const on = u.enabled || u.faces;
  const chooseModel = (upscaling: string) => {
    // A model named for its factor (…-x4) sets the model scale; on the Upscale tab the output too.
    const native = nativeScale(upscaling);
    if (native === null) return set({ upscaling });
    const scale = clampToSpec(native, spec('scale'));
    const outscale = tab === 'upscale' ? clampToSpec(native, spec('outscale')) : u.outscale;
    set({ upscaling, upscale: { ...u, scale, outscale } });
  };
  const body = (
    <>
      <div className="field-grid">
        <CheckField label={t('param.upscale')} checked={u.enabled} onChange={(enabled) => upscale({ enabled })} testId="upscale-enabled" />
        <SelectField label={t('param.upscaling')} value={p.upscaling} options={options('model', server.models.upscaling)} onChange={chooseModel} disabled={!u.enabled} testId="upscaling-model" />
        <NumberField label={t('param.scale')} value={u.scale} spec={spec('scale')} onChange={(scale) => upscale({ scale })} disabled={!u.enabled} />
        <NumberField label={t('param.outscale')} value={u.outscale} spec={spec('outscale')} onChange={(outscale) => upscale({ outscale })} disabled={!u.enabled} testId="outscale" />
        <NumberField label={t('param.denoise')} value={u.denoise} spec={spec('denoise')} onChange={(denoise) => upscale({ denoise })} disabled={!u.enabled} />
      </div>
      <div className="field-grid">
        <CheckField label={t('param.faces')} checked={u.faces} onChange={(faces) => upscale({ faces })} />
        <SelectField label={t('param.correction')} value={p.correction} options={options('model', server.models.correction)} onChange={(correction) => set({ correction })} disabled={!u.faces} />
        <NumberField label={t('param.faceStrength')} value={u.faceStrength} spec={spec('faceStrength')} onChange={(faceStrength) => upscale({ faceStrength })} disabled={!u.faces} />
        <NumberField label={t('param.faceOutscale')} value={u.faceOutscale} spec={spec('faceOutscale')} onChange={(faceOutscale) => upscale({ faceOutscale })} disabled={!u.faces} />
        <SelectField label={t('param.upscaleOrder')} value={u.upscaleOrder} options={options('upscaleOrder', choiceKeys(server.params, 'upscaleOrder'))} onChange={(upscaleOrder) => upscale({ upscaleOrder })} disabled={!on} />
      </div>
    </>
  );
  if (tab === 'upscale') {
    return (
      <fieldset className="group" data-testid="section-upscale">
        <legend>{t('section.upscale')}</legend>
        {body}
      </fieldset>
    );
  }
  return (
    <Section title={t('section.upscale')} badge={on ? t('common.on') : undefined} testId="section-upscale">
      {body}
    </Section>
  );
}

export function ExperimentalSection({ p, set }: GroupProps) {
  const { server } = useApp();
  const { t } = useI18n();
  const options = useOptions();
  const spec = useSpec();
  const { latentSymmetry: ls, promptEditing: pe } = p.experimental;
  const update = (patch: Partial<TabParams['experimental']>) => set({ experimental: { ...p.experimental, ...patch } });
  const symmetry = (patch: Partial<typeof ls>) => update({ latentSymmetry: { ...ls, ...patch } });
  const editing = (patch: Partial<typeof pe>) => update({ promptEditing: { ...pe, ...patch } });
  return (
    <Section title={t('section.experimental')} badge={ls.enabled || pe.enabled ? t('common.on') : undefined}>
      <CheckField label={t('param.promptEditing')} checked={pe.enabled} onChange={(enabled) => editing({ enabled })} />
      <div className="field-grid">
        <SelectField label={t('param.promptFilter')} value={pe.promptFilter} options={options('promptFilter', server.filters.prompt)} onChange={(promptFilter) => editing({ promptFilter })} disabled={!pe.enabled} />
        <TextField label={t('param.removeTokens')} value={pe.removeTokens} onChange={(removeTokens) => editing({ removeTokens })} />
        <TextField label={t('param.addSuffix')} value={pe.addSuffix} onChange={(addSuffix) => editing({ addSuffix })} />
        <NumberField label={t('param.minLength')} value={pe.minLength} spec={spec('promptEditing.minLength')} onChange={(minLength) => editing({ minLength })} disabled={!pe.enabled} />
      </div>
      <CheckField label={t('param.latentSymmetry')} checked={ls.enabled} onChange={(enabled) => symmetry({ enabled })} />
      <div className="field-grid">
        <NumberField label={t('param.gradientStart')} value={ls.gradientStart} spec={spec('latentSymmetry.gradientStart')} onChange={(gradientStart) => symmetry({ gradientStart })} disabled={!ls.enabled} />
        <NumberField label={t('param.gradientEnd')} value={ls.gradientEnd} spec={spec('latentSymmetry.gradientEnd')} onChange={(gradientEnd) => symmetry({ gradientEnd })} disabled={!ls.enabled} />
        <NumberField label={t('param.lineOfSymmetry')} value={ls.lineOfSymmetry} spec={spec('latentSymmetry.lineOfSymmetry')} onChange={(lineOfSymmetry) => symmetry({ lineOfSymmetry })} disabled={!ls.enabled} />
      </div>
    </Section>
  );
}

export function GridSection({ p, set }: GroupProps) {
  const { t } = useI18n();
  const grid = p.grid;
  const axis = (which: 'columns' | 'rows', patch: Partial<GridAxis>) =>
    set({ grid: { ...grid, [which]: { ...grid[which], ...patch } } });
  const parameterOptions: Option[] = GRID_PARAMETERS.map((name) => ({ value: name, label: t(`grid.parameter.${name}`) }));
  return (
    <Section title={t('section.grid')} badge={grid.enabled ? t('common.on') : undefined} testId="section-grid">
      <CheckField label={t('grid.enabled')} checked={grid.enabled} onChange={(enabled) => set({ grid: { ...grid, enabled } })} testId="grid-enabled" />
      <p className="hint">{t('grid.hint')}</p>
      {(['columns', 'rows'] as const).map((which) => (
        <div className="field-grid" key={which}>
          <SelectField
            label={t(`grid.${which}Parameter`)}
            value={grid[which].parameter}
            options={parameterOptions}
            onChange={(parameter) => axis(which, { parameter: parameter as GridParameter })}
            disabled={!grid.enabled}
            testId={`grid-${which}-parameter`}
          />
          <TextField
            label={t(`grid.${which}Values`)}
            value={grid[which].values}
            onChange={(values) => axis(which, { values })}
            placeholder={t('grid.valuesPlaceholder')}
            testId={`grid-${which}-values`}
          />
        </div>
      ))}
    </Section>
  );
}
