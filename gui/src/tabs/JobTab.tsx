/** One generation tab: its images, its parameters, what it will produce, and the Generate button. */
import { type FormEvent, useState } from 'react';
import { ApiError } from '../client/api';
import { buildFiles, missingImages, type TabImages } from '../client/requests';
import { ImageInput } from '../components/ImageInput';
import { useNotices } from '../components/Notices';
import { MaskCanvas } from '../components/MaskCanvas';
import {
  ExperimentalSection,
  GridSection,
  HighresSection,
  Img2ImgControls,
  ImageParamControls,
  InpaintControls,
  ModelControls,
  OutpaintSection,
  SizeControls,
  UpscaleSection,
} from '../components/ParamControls';
import { ProfilesRow } from '../components/ProfilesRow';
import { SettingsLink } from '../components/SettingsLink';
import { PromptControls } from '../components/PromptControls';
import { useApp } from '../context';
import { formatBytes, useI18n } from '../i18n';
import { bodyProblem, tabImages, useImageStore } from '../state/images';
import { imageCount, type JobTab, outputSize, type TabParams } from '../state/params';
import { useAppStore } from '../state/store';
import { describeError, submitJob } from '../submit';

export function JobTabView({ tab }: { tab: JobTab }) {
  const { client, server } = useApp();
  const { t } = useI18n();
  const p = useAppStore((s) => s.tabParams[tab]) as TabParams;
  const setTabParams = useAppStore((s) => s.setTabParams);
  const pushHistory = useAppStore((s) => s.pushHistory);
  const images = useImageStore((s) => tabImages(s, tab));
  const setImage = useImageStore((s) => s.setImage);
  const setMask = useImageStore((s) => s.setMask);
  const rememberFiles = useImageStore((s) => s.rememberFiles);
  const notify = useNotices((s) => s.push);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const [unauthorised, setUnauthorised] = useState(false);

  const set = (patch: Partial<TabParams>) => setTabParams(tab, { ...p, ...patch });
  const group = { tab, p, set };

  const files: TabImages = {
    source: images.source?.blob ?? null,
    mask: images.mask,
    blendSources: [images.blendSources[0]?.blob ?? null, images.blendSources[1]?.blob ?? null],
  };
  const missing = missingImages(tab, files);
  // The Upscale tab with both upscaling and correction off would send a job that changes nothing.
  const nothingToDo = tab === 'upscale' && !p.upscale.enabled && !p.upscale.faces;
  const blocked = missing.length > 0 || nothingToDo;
  const sourceSize = tab === 'blend' ? images.blendSources[0] : images.source;
  const size = outputSize(tab, p, sourceSize ? { width: sourceSize.width, height: sourceSize.height } : null);
  const count = imageCount(tab, p);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (blocked || busy) return;
    setError('');
    setUnauthorised(false);
    const upload = buildFiles(tab, files);
    // Each image fits, but a source and its mask together may not: say so before a long upload.
    const tooLarge = bodyProblem(Object.values(upload), server.limits);
    if (tooLarge) {
      setError(t('image.bodyTooLarge', { size: formatBytes(tooLarge.size), limit: formatBytes(tooLarge.limit) }));
      return;
    }
    setBusy(true);
    try {
      const { item, files: sent } = await submitJob(client, tab, p, upload);
      pushHistory(item);
      rememberFiles(item.name, sent);
      // Below the two-column breakpoint the history sits under this long form, out of sight.
      if (window.matchMedia('(max-width: 1099px)').matches) notify({ kind: 'info', text: t('output.queued') });
    } catch (err) {
      setError(describeError(t, err));
      setUnauthorised(err instanceof ApiError && err.unauthorised);
    } finally {
      setBusy(false);
    }
  };

  const maskBackground = tab === 'blend' ? images.blendSources[0] : images.source;

  return (
    <form className="job-form" onSubmit={(e) => void submit(e)} data-testid={`form-${tab}`} noValidate>
      <ProfilesRow tab={tab} p={p} set={(next) => setTabParams(tab, next)} />

      {(tab === 'img2img' || tab === 'inpaint' || tab === 'upscale') && (
        <ImageInput
          label={t('image.source')}
          image={images.source}
          onChange={(img) => setImage(tab, 'source', img)}
          testId="source-input"
          limits={server.limits}
          preview={tab !== 'inpaint'}
        />
      )}
      {tab === 'blend' && (
        <div className="image-pair">
          <ImageInput label={t('image.blend0')} image={images.blendSources[0]} onChange={(img) => setImage(tab, 'blend0', img)} testId="blend-input-0" limits={server.limits} />
          <ImageInput label={t('image.blend1')} image={images.blendSources[1]} onChange={(img) => setImage(tab, 'blend1', img)} testId="blend-input-1" limits={server.limits} />
        </div>
      )}
      {(tab === 'inpaint' || tab === 'blend') && maskBackground && (
        <fieldset className="group">
          <legend>{t('mask.title')}</legend>
          <p className="hint">{t(tab === 'blend' ? 'mask.blendHint' : 'mask.hint')}</p>
          <MaskCanvas source={maskBackground} mask={images.mask} onMask={(blob) => setMask(tab, blob)} />
        </fieldset>
      )}

      {tab !== 'blend' && <PromptControls p={p} set={set} negative={tab !== 'upscale'} />}

      <fieldset className="group">
        <legend>{t('section.model')}</legend>
        <ModelControls {...group} />
        {tab === 'inpaint' && !/inpaint/i.test(p.model) && (
          <p className="hint warn" data-testid="inpaint-model-warning">
            {t('param.inpaintModelWarning')}
          </p>
        )}
      </fieldset>

      {tab === 'upscale' && <UpscaleSection {...group} />}

      {tab !== 'upscale' && tab !== 'blend' && (
        <fieldset className="group">
          <legend>{t('section.image')}</legend>
          <ImageParamControls {...group} />
        </fieldset>
      )}

      {tab === 'txt2img' && (
        <fieldset className="group">
          <legend>{t('section.size')}</legend>
          <SizeControls {...group} />
        </fieldset>
      )}
      {tab === 'img2img' && (
        <fieldset className="group">
          <legend>{t('section.img2img')}</legend>
          <Img2ImgControls {...group} />
        </fieldset>
      )}
      {tab === 'inpaint' && (
        <fieldset className="group">
          <legend>{t('section.inpaint')}</legend>
          <InpaintControls {...group} />
        </fieldset>
      )}

      <div className="sections">
        {tab === 'inpaint' && <OutpaintSection {...group} />}
        {tab !== 'blend' && <HighresSection {...group} />}
        {tab !== 'upscale' && <UpscaleSection {...group} />}
        {tab === 'txt2img' && <GridSection {...group} />}
        {(tab === 'txt2img' || tab === 'img2img' || tab === 'inpaint') && <ExperimentalSection {...group} />}
      </div>

      <div className="submit-bar">
        <p className="output-size" data-testid="output-size" aria-live="polite">
          {size
            ? t('output.size', { width: size.width, height: size.height, count })
            : t('output.unknown')}
        </p>
        {missing.length > 0 && (
          <p className="hint" data-testid="missing-images">
            {t('output.missing', { images: missing.map((m) => t(`image.field.${m}`)).join(', ') })}
          </p>
        )}
        {nothingToDo && (
          <p className="hint" data-testid="nothing-to-do">
            {t('output.nothingToDo')}
          </p>
        )}
        {error && (
          <p className="form-error" role="alert" data-testid="form-error">
            {error}
            {unauthorised && (
              <>
                {' '}
                <SettingsLink />
              </>
            )}
          </p>
        )}
        <button type="submit" className="primary generate" disabled={blocked || busy} data-testid="generate">
          {busy ? t('output.submitting') : t(tab === 'upscale' ? 'output.upscale' : 'output.generate')}
        </button>
      </div>
    </form>
  );
}
